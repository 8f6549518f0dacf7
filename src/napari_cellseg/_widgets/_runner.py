"""Background work for the widgets: a worker with a progress bar, Cancel and errors
shown as napari notifications (never only logged)."""

from __future__ import annotations

from collections.abc import Callable, Generator

from magicgui.widgets import Label, ProgressBar, PushButton


class Runner:
    """Run a progress generator in a napari ``thread_worker``; the viewer stays live.

    The generator yields ``(done, total)`` and returns the result, which goes to
    ``on_done`` in the main thread.
    """

    def __init__(self, run_text: str, title: str):
        self.title = title
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        self.worker = None
        self.cancel_button.changed.connect(self.cancel)

    @property
    def widgets(self) -> list:
        return [self.run_button, self.cancel_button, self.progress, self.status]

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running

    def start(self, generator: Callable[..., Generator], *args, on_done: Callable,
              on_yield: Callable | None = None, **kwargs):
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError(f"{self.title} is already running; wait or press Cancel")
        # Errors go to _on_error (a notification), not re-raised into the event loop.
        worker = create_worker(generator, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        worker.yielded.connect(on_yield or self._on_progress)
        worker.returned.connect(on_done)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.visible = True
        self.progress.value = 0
        self.status.value = f"{self.title}: starting…"
        worker.start()
        return worker

    def cancel(self, *_) -> None:
        if self.running:
            self.status.value = f"{self.title}: cancelling…"
            self.worker.quit()

    def _on_progress(self, step) -> None:
        if isinstance(step, tuple) and len(step) == 2:
            done, total = step
            self.progress.max = max(int(total), 1)
            self.progress.value = int(done)
            self.status.value = f"{self.title}: {done} / {total}"
        elif isinstance(step, str):
            self.status.value = step

    def _on_error(self, err: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status.value = f"{self.title} failed: {err}"
        show_error(f"{self.title} failed: {err}")

    def _on_aborted(self) -> None:
        self.status.value = f"{self.title}: cancelled"

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.visible = False
        self.worker = None
