"""Run higra from threads that Python started.

higra's C++ (pybind11) re-acquires the GIL through a per-thread state. In a thread that
Python did not start, such as a reused Qt pool thread of a napari worker, that state can
be stale, and a hierarchy build crashed there (SIGSEGV in ``take_gil``, seen under gdb
after a few widget runs). Calls made from such a thread are therefore handed to one
long-lived thread that Python started; elsewhere (the main thread, the CLI, tests, dask)
they run in place, at no cost.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _foreign_thread() -> bool:
    # threading gives a thread it did not start a _DummyThread object (private, but the
    # documented behaviour of threading.current_thread() for such threads).
    return isinstance(threading.current_thread(), threading._DummyThread)


def on_python_thread(fn: F) -> F:
    """Decorator: call ``fn`` on a Python-started thread when called from a foreign one."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _foreign_thread():
            return fn(*args, **kwargs)
        global _executor
        with _lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-cellseg-higra")
        return _executor.submit(fn, *args, **kwargs).result()

    return wrapper
