"""Shared by the benchmarks that drive a widget in a headless viewer (in a subprocess,
under Xvfb): the lines that press its Run button and wait for its worker, as source text
to put at the head of such a script."""

RUN_WIDGET = r"""
import time
from qtpy.QtWidgets import QApplication


def run_widget(widget) -> float:
    # Press the widget's Run, keep the Qt loop going until its worker ends; seconds.
    t = time.perf_counter()
    widget.run()
    app = QApplication.instance()
    while widget._runner.worker is not None:
        app.processEvents()
        time.sleep(0.1)
    return time.perf_counter() - t
"""
