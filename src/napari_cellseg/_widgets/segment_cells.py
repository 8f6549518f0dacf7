"""Segment cells: the one-click path (image -> cells with the shipped model), then
h / sensitivity sliders that re-segment live from the cached prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, create_widget

from ._layers import one_channel, pixel_size_of, show_layer
from ._runner import Runner
from ._seed_controls import SeedControls

if TYPE_CHECKING:
    import napari

CELLS_LAYER = "cells"
SEEDS_LAYER = "seeds"


def model_choices(*_) -> list[str]:
    from ..model.registry import available_models

    return list(available_models()) or ["(no model)"]


def image_data(layer) -> np.ndarray:
    """A layer's pixels as one channel: 2-D, or (planes, M, N) for a stack."""
    data = one_channel(layer)
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3):
        raise ValueError(f"layer {layer.name!r} has shape {data.shape}: napari-cellseg segments "
                         "2-D images and (planes, M, N) stacks plane by plane")
    return data


class ModelInputs:
    """The inputs every model-running widget shares: image, pixel size, model, device.

    The pixel size fills itself from the image layer's metadata or scale; the model
    list refreshes when a model is saved (e.g. by the Train widget).
    """

    def __init__(self):
        from ..model.registry import on_model_saved

        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.pixel_size = FloatSpinBox(value=0.0, min=0.0, max=100.0, step=0.01,
                                       label="Pixel size (µm)", tooltip="0: the model's own")
        self.model = ComboBox(choices=model_choices, label="Model")
        self.device = ComboBox(value="auto", choices=("auto", "cpu", "cuda", "mps"), label="Device")
        on_model_saved(self.model.reset_choices)
        self.image.changed.connect(self._on_image)
        self._on_image()

    @property
    def widgets(self) -> list:
        return [self.image, self.pixel_size, self.model, self.device]

    @property
    def pixel_size_um(self) -> float | None:
        return float(self.pixel_size.value) or None

    def _on_image(self, *_) -> None:
        size = pixel_size_of(self.image.value)
        if size:
            self.pixel_size.value = size


class SegmentCellsWidget(Container):
    """Image -> cells in one click; then move h and sensitivity and watch the cells."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._inputs = ModelInputs()
        self._image, self._pixel_size = self._inputs.image, self._inputs.pixel_size
        self._model, self._device = self._inputs.model, self._inputs.device
        self._runner = Runner("Segment cells", "Segmentation")
        self._seeds = SeedControls()
        self._min_area = FloatSpinBox(value=0.0, min=0.0, max=10000.0, step=1.0,
                                      label="Min cell area (µm²)", tooltip="0: a fifth of a typical cell")
        self.extend([*self._inputs.widgets, *self._runner.widgets,
                     *self._seeds.widgets, self._min_area])
        self.predictions: list = []
        self._touched = False  # has the user moved a slider?
        self._runner.run_button.changed.connect(self.run)
        from superqt.utils import qdebounced

        # A short debounce: dragging a slider re-segments once it pauses, not per pixel.
        self._debounced_update = qdebounced(self.update_cells, timeout=40)
        for signal in (*self._seeds.changed, self._min_area.changed):
            signal.connect(self._on_param)

    def _on_param(self, *_) -> None:
        self._touched = True
        if self.predictions:
            self._debounced_update()

    def params(self) -> dict:
        p = self._seeds.params()
        if self._min_area.value > 0:
            p["min_cell_area"] = float(self._min_area.value)
        return p

    def run(self, *_):
        """Start the prediction in a worker; cells appear when it returns."""
        from ..pipeline import iter_predict_planes

        data = image_data(self._image.value)
        model = self._model.value
        if model == "(no model)":
            raise ValueError("no model is installed: train one (Train widget) or reinstall the package")
        pixel_size = float(self._pixel_size.value) or None
        self._source = self._image.value.name
        self._stack = data.ndim == 3
        return self._runner.start(iter_predict_planes, data, pixel_size, model, self._device.value,
                                  on_done=self._on_predicted)

    def _on_predicted(self, predictions) -> None:
        self.predictions = predictions
        if predictions and not self._touched:
            # The model's own tuned defaults, the first time only: later runs keep the
            # user's settings.
            self._seeds.set_defaults(predictions[0].defaults)
        self.update_cells()

    def update_cells(self, *_):
        """Re-segment from the cached predictions with the current sliders."""
        if not self.predictions:
            return None
        params = self.params()
        cells = [p.segment(**params) for p in self.predictions]
        data = np.stack(cells) if self._stack else cells[0]
        meta = {"stage": "cells", "parameters": params, "source": self._source,
                "model": self._model.value, "pixel_size_um": float(self._pixel_size.value) or None}
        layer = show_layer(self._viewer, data, CELLS_LAYER, "labels", metadata=meta)
        n = int(sum(int(c.max()) for c in cells))
        self._runner.status.value = f"{n} cells" + (f" in {len(cells)} planes" if self._stack else "")
        return layer
