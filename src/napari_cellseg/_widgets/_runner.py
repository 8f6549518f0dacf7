"""Background work for the widgets: a worker with a progress bar, Cancel and errors
shown as napari notifications (never only logged), the live re-segmentation that
stays on the GUI thread only while it is cheap, and the one place where an error from a
button, a slider or a worker becomes words: a notification and the status line."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Label, ProgressBar, PushButton

from ..progress import Progress

logger = logging.getLogger(__name__)

# Errors a user's input or files cause (the core's ValueErrors, a file that exists, a
# folder that cannot be written): words are enough. Anything else is a bug: it is shown
# the same way and also logged with its traceback.
USER_ERRORS = (ValueError, OSError)

# Widest a status line may make its dock (px): longer text wraps instead.
STATUS_WIDTH = 320


def error_text(title: str, err: BaseException) -> str:
    """``"<title> failed: <message>"``; a bug's message is prefixed with its type."""
    message = str(err) or type(err).__name__
    if not isinstance(err, USER_ERRORS):
        message = f"{type(err).__name__}: {message}"
    return f"{title} failed: {message}"


def report_error(title: str, err: BaseException, status: Label | None = None) -> None:
    """Show ``err`` as a readable notification and on the status line; log a bug's
    traceback (``logging.exception``) so that it is never swallowed."""
    from napari.utils.notifications import show_error

    text = error_text(title, err)
    if status is not None:
        status.value = text
    show_error(text)
    if not isinstance(err, USER_ERRORS):
        logger.error("%s", text, exc_info=err)


# At most this many of a run's warnings become notifications; the rest are counted.
MAX_WARNINGS_SHOWN = 3


def show_warnings(predictions) -> list[str]:
    """Each distinct warning of a run's Predictions (``Prediction.warnings``: a scale not
    estimated, a network unsure of the image) as a napari notification, since the viewer
    shows no log; a stack's say their plane. Returns the messages shown."""
    from napari.utils.notifications import show_warning

    many = len(predictions) > 1
    texts = list(dict.fromkeys(f"plane {i + 1}: {w}" if many else w
                               for i, p in enumerate(predictions) for w in p.warnings))
    for text in texts[:MAX_WARNINGS_SHOWN]:
        show_warning(text)
    more = len(texts) - MAX_WARNINGS_SHOWN
    if more > 0:
        show_warning(f"{more} more warning{'s' if more > 1 else ''}: see the layer's metadata ('warnings')")
    return texts


def warning_note(texts: list[str]) -> str:
    """What a status line adds for a run's warnings (:func:`show_warnings`): the first."""
    if not texts:
        return ""
    more = len(texts) - 1
    return f". Warning: {texts[0]}" + (
        f" (and {more} more: see the layer's metadata, 'warnings')" if more else "")


def reports_errors(handler: Callable, title: str, status: Label | None = None) -> Callable:
    """``handler`` for a button, slider or layer-choice signal: an exception it raises
    is reported (:func:`report_error`) instead of escaping into the Qt event loop, where
    napari shows it as a pop-up without its message. The handler itself still raises,
    for code and tests that call it directly."""

    @functools.wraps(handler)
    def handle(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as err:
            report_error(title, err, status)
            return None

    return handle


def status_label() -> Label:
    """A status line that wraps long text rather than widening the dock."""
    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setMaximumWidth(STATUS_WIDTH)
    return label


class WorkerFailed(Exception):
    """A RuntimeError raised in a worker, carried out as another type: superqt takes a
    generator's RuntimeError for a deleted worker and ends the run with neither
    ``errored`` nor ``finished`` (the widget stuck at "running", no error shown): CUDA
    out of memory, a device that is not there, a missing optional package."""

    def __init__(self, original: RuntimeError):
        super().__init__(str(original))
        self.original = original


def _detach_filter(callback: Callable[[], None]):
    """A Qt event filter that calls ``callback`` when a widget it watches is taken out of
    its parent: napari's ``remove_dock_widget`` does ``setParent(None)`` on the dock's
    widget, which lives on (held by its running worker), so ``destroyed`` never fires."""
    from qtpy.QtCore import QEvent, QObject

    class Detached(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
                callback()
            return False

    return Detached()


def _watch_ancestors(widget, event_filter) -> None:
    """Install ``event_filter`` on every ancestor of ``widget`` (Qt installs a filter on
    an object once, however often asked)."""
    w = widget.parentWidget()
    while w is not None:
        w.installEventFilter(event_filter)
        w = w.parentWidget()


class Runner:
    """Run a progress generator in a napari ``thread_worker``; the viewer stays live.

    The generator yields :class:`~napari_cellseg.progress.Progress` records (the bar
    follows ``done / total``, the status line says what is done) and returns the
    result, which goes to ``on_done`` in the main thread.
    """

    def __init__(self, run_text: str, title: str):
        self.title = title
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = status_label()
        self.worker = None
        self._gen = None
        self._closed = False
        self._detach_filter = None
        self.cancel_button.changed.connect(self.cancel)
        # The widget closed (its dock removed): its run is cancelled and shows nothing more.
        self.run_button.native.destroyed.connect(self.close)

    def close(self, *_) -> None:
        """Stop the run, as Cancel does, for a widget that is gone (no status to write)."""
        self._closed = True
        if self.running:
            self.worker.quit()

    def _unless_closed(self, handler: Callable) -> Callable:
        return lambda *args: None if self._closed else handler(*args)

    @property
    def widgets(self) -> list:
        return [self.run_button, self.cancel_button, self.progress, self.status]

    def on_run(self, handler: Callable) -> None:
        """Call ``handler`` on Run; what it raises (a bad input found before the worker
        starts) is reported like a worker's error."""
        self.run_button.changed.connect(reports_errors(handler, self.title, self.status))

    @property
    def running(self) -> bool:
        """A run was started and has not finished: also while its worker still waits for
        a thread (the pool has one per core), when Cancel must stop it all the same."""
        return self.worker is not None

    def start(self, generator: Callable[..., Generator], *args, on_done: Callable,
              on_yield: Callable | None = None, on_cancelled: Callable | None = None, **kwargs):
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError(f"{self.title} is already running; wait or press Cancel")
        gen = generator(*args, **kwargs)

        def run():  # the generator is ours, so that Cancel can close it (see _on_finished)
            try:
                return (yield from gen)
            except RuntimeError as err:
                raise WorkerFailed(err) from err

        # Errors go to _on_error (a notification), not re-raised into the event loop.
        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._unless_closed(on_yield or self.show_progress))
        # Showing the result can fail too (a layer gone, a file unreadable): in words.
        worker.returned.connect(self._unless_closed(reports_errors(on_done, self.title, self.status)))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._unless_closed(self._on_aborted))
        if on_cancelled is not None:  # after the status says "cancelled": it may add to it
            worker.aborted.connect(self._unless_closed(reports_errors(on_cancelled, self.title, self.status)))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._gen = gen
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.visible = True
        self.progress.value = 0
        self.status.value = f"{self.title}: starting…"
        # Taken out of its dock while this run goes on: the run is cancelled; docked again
        # later, the widget runs anew (_closed is per run). Watched from where it sits now.
        self._closed = False
        if self._detach_filter is None:
            self._detach_filter = _detach_filter(lambda: self.close() if self.worker is not None else None)
        _watch_ancestors(self.run_button.native, self._detach_filter)
        worker.start()
        return worker

    def cancel(self, *_) -> None:
        if self.running:
            self.status.value = f"{self.title}: cancelling…"
            self.worker.quit()

    def show_progress(self, step: Progress) -> None:
        """The bar from ``done / total``; the status in words ("3 / 12 tiles"), or as a
        percentage when the record names no unit."""
        total = max(int(step.total), 1)
        self.progress.max = total
        self.progress.value = min(int(step.done), total)
        text = step.text() if (step.message or step.unit) else f"{100 * step.done // total} %"
        self.status.value = f"{self.title}: {text}"

    def _on_error(self, err: Exception) -> None:
        err = err.original if isinstance(err, WorkerFailed) else err
        if self._closed:  # no status line left to write to: logged, never swallowed
            logger.error("%s", error_text(self.title, err), exc_info=err)
            return
        report_error(self.title, err, self.status)

    def _on_aborted(self) -> None:
        self.status.value = f"{self.title}: cancelled"

    def _on_finished(self) -> None:
        if not self._closed:
            self.run_button.enabled = True
            self.cancel_button.enabled = False
            self.progress.visible = False
        if self.worker is not None and self.worker.abort_requested and self._gen is not None:
            # Cancelled: the worker left the generator suspended. Closing it runs its
            # clean-up (a cluster's tasks cancelled and the cluster shut down) off the GUI thread.
            import threading

            threading.Thread(target=self._gen.close, name=f"{self.title} clean-up", daemon=True).start()
        self._gen = None
        self.worker = None


class LiveUpdate:
    """Re-segmentation from a cached Prediction that never builds on the GUI thread.

    When the prediction's hierarchies for the parameters are built
    (``Prediction.is_warm``), the work runs at once on the GUI thread (milliseconds);
    otherwise ``prediction.warm(params)`` and the work run in their own worker, one at a
    time, and the result is shown when it returns. A request made while a worker runs
    supersedes it: its result is dropped and the latest request runs next.
    """

    def __init__(self, title: str, status: Label | None = None):
        self.title = title
        self.status = status
        self.worker = None
        self._generation = 0
        self._pending: tuple | None = None
        self._closed = False
        if status is not None:  # the widget closed: what it asked for is dropped
            status.native.destroyed.connect(self._close)

    def _close(self, *_) -> None:
        self._closed = True
        self.drop()

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def request(self, prediction, params, work: Callable[[], Any], on_result: Callable[[Any], None]) -> bool:
        """Run ``work()`` and pass its value to ``on_result``; True when that happened
        now (on the GUI thread), False when it was left to a worker."""
        self._generation += 1
        if prediction.is_warm(params):
            self._pending = None
            on_result(work())
            return True
        if self.busy:
            self._pending = (prediction, params, work, on_result)
        else:
            self._start(prediction, params, work, on_result)
        return False

    def drop(self) -> None:
        """Forget what was asked for: a running worker's result and a pending request."""
        self._generation += 1
        self._pending = None

    def _start(self, prediction, params, work, on_result) -> None:
        from napari.qt.threading import create_worker

        generation = self._generation

        def build_then_work():  # higra's own thread rule is kept by core (_threads.py)
            prediction.warm(params)
            return work()

        def returned(value) -> None:
            if generation == self._generation:  # nothing was asked for since
                reports_errors(on_result, self.title, self.status)(value)

        worker = create_worker(build_then_work, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        if self.status is not None:
            self.status.value = f"{self.title}: building the hierarchies for these settings…"
        worker.start()

    def _on_error(self, err: Exception) -> None:
        self._pending = None
        if self._closed:
            logger.error("%s", error_text(self.title, err), exc_info=err)
            return
        report_error(self.title, err, self.status)

    def _on_finished(self) -> None:
        self.worker = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.request(*pending)
