"""The one progress protocol of napari-cellseg.

Every long job (inference, training, batch, evaluation of a folder) is a generator named
``iter_*`` that yields :class:`Progress` records and *returns* its result; the plain
function of the same name (``predict`` for ``iter_predict`` ...) drains it. The CLI and the
tests drain generators directly; the widgets run them in a napari ``thread_worker``, whose
``quit()`` stops the job at its next yield (so a job yields at least once per unit of
work that a user may wait for: a tile, a training step, a file).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Progress(NamedTuple):
    """``done`` of ``total`` ``unit`` (e.g. 3 of 12 "tiles"); ``message`` says what is
    being done in words; ``info`` carries a record a caller may show (a training epoch's
    losses and scores)."""

    done: int
    total: int
    unit: str = ""
    message: str = ""
    info: dict[str, Any] | None = None

    def text(self) -> str:
        """A short status line: the message, else "done / total unit"."""
        if self.message:
            return self.message
        return f"{self.done} / {self.total}" + (f" {self.unit}" if self.unit else "")


def drain(gen: Generator[Progress, None, T], progress: Callable[[Progress], None] | None = None) -> T:
    """Run a progress generator to its end and return its value, passing each
    :class:`Progress` to ``progress`` when given."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)
