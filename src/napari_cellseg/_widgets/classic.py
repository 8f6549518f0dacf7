"""Classic segmentation widget: image layer -> labels layer, live (debounced) sliders."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    PushButton,
    Slider,
    create_widget,
)

from ..core import classic
from ._inputs import CLASSIC_LAYER
from ._layers import image_plane, plane_record, show_layer
from ._runner import reports_errors, status_label

if TYPE_CHECKING:
    import napari


class ClassicWidget(Container):
    """Smooth, threshold, label and size-filter the selected image; sliders update live."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._image = create_widget(label="Image", annotation="napari.layers.Image")
        self._sigma = FloatSlider(value=classic.SMOOTH_SIGMA, min=0.0, max=10.0, step=0.1, label="Smoothing σ (px)")
        self._threshold = FloatSlider(value=classic.THRESHOLD, min=0.0, max=1.0, step=0.01, label="Threshold")
        self._min_size = Slider(value=classic.MIN_CELL_SIZE, min=0, max=2000, step=5, label="Min size (px)")
        self._method = ComboBox(value="global", choices=classic.THRESHOLD_METHODS, label="Threshold type")
        self._split = ComboBox(value="none", choices=("none", *classic.SPLIT_METHODS), label="Split touching")
        self._live = CheckBox(value=True, text="Update live")
        self._run_button = PushButton(text="Segment")
        self._status = status_label()
        self.extend([self._image, self._method, self._sigma, self._threshold, self._min_size,
                     self._split, self._live, self._run_button, self._status])
        self._image.changed.connect(reports_errors(self._on_image, "Segmentation", self._status))
        self._run_button.changed.connect(reports_errors(self.run, "Segmentation", self._status))
        from superqt.utils import qdebounced

        # Dragging a slider re-segments once it pauses, not on every tick.
        self._debounced_run = qdebounced(reports_errors(self.run, "Segmentation", self._status),
                                         timeout=40)
        for w in (self._sigma, self._threshold, self._min_size, self._method, self._split):
            w.changed.connect(self._on_param)
        reports_errors(self._on_image, "Segmentation", self._status)()

    def _on_image(self, *_) -> None:
        """Fit the threshold slider to the range of what the threshold applies to: the
        image as segment_classic sees it (normalised to 0-1 for camera counts)."""
        layer = self._image.value
        if layer is None:
            return
        data, _ = classic.classic_input(image_plane(layer, self._viewer))
        lo, hi = float(np.min(data)), float(np.max(data))
        if hi > lo:
            self._threshold.min, self._threshold.max = min(lo, 0.0), hi * 1.05
            self._threshold.step = (hi - min(lo, 0.0)) / 200.0

    def _on_param(self, *_) -> None:
        if self._live.value and self._image.value is not None:
            self._debounced_run()

    def params(self) -> dict:
        return {
            "sigma": float(self._sigma.value), "threshold": float(self._threshold.value),
            "min_size": int(self._min_size.value), "method": self._method.value,
            "split": None if self._split.value == "none" else self._split.value,
        }

    def run(self, *_):
        """Segment the current image plane and show the labels layer; returns it."""
        layer = self._image.value
        image = image_plane(layer, self._viewer)
        params = self.params()
        labels = classic.segment_classic(image, **params)
        self._status.value = f"{int(labels.max())} cells"
        return show_layer(self._viewer, labels, CLASSIC_LAYER, "labels",
                          metadata={"stage": "classic", "parameters": params, "source": layer.name,
                                    **plane_record(layer, self._viewer)},
                          like=layer)
