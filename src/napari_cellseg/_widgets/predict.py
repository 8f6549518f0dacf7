"""Preprocess + Predict (UNet) stage: probability maps as layers, in a worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, FloatSpinBox

from ._layers import image_plane, show_layer
from ._runner import Runner
from .segment_cells import ModelInputs

if TYPE_CHECKING:
    import napari

PREDICTION_KEY = "prediction"
PROBABILITY_LAYERS = {
    "seed probability": ("magenta", True),
    "cytoplasm probability": ("green", True),
    "background probability": ("gray", False),
}


def prediction_of(layer):
    """The cached Prediction behind a probability layer, or a clear error."""
    pred = None if layer is None else layer.metadata.get(PREDICTION_KEY)
    if pred is None:
        raise ValueError("choose a probability layer made by the Predict widget "
                         "(e.g. 'seed probability'); run Predict first")
    return pred


class PredictWidget(Container):
    """Top-hat and rescale the image, run the UNet in the background, show the maps."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._inputs = ModelInputs()
        self._image, self._pixel_size = self._inputs.image, self._inputs.pixel_size
        self._model, self._device = self._inputs.model, self._inputs.device
        self._tophat = FloatSpinBox(value=0.0, min=0.0, max=1000.0, step=10.0, label="Top-hat (µm)",
                                    tooltip="background removal size; 0: off (the paper: 130 µm)")
        self._runner = Runner("Predict", "Prediction")
        self.extend([*self._inputs.widgets, self._tophat, *self._runner.widgets])
        self._runner.run_button.changed.connect(self.run)
        self.prediction = None

    def run(self, *_):
        from ..pipeline import iter_predict

        image = image_plane(self._image.value, self._viewer)
        return self._runner.start(
            iter_predict, image, float(self._pixel_size.value) or None, self._model.value,
            self._device.value, tophat_um=float(self._tophat.value) or None,
            on_done=self._on_done)

    def _on_done(self, prediction) -> None:
        self.prediction = prediction
        meta = {"stage": "predict", "model": self._model.value,
                "pixel_size_um": float(self._pixel_size.value) or None,
                "tophat_um": float(self._tophat.value) or None}
        if self._tophat.value or self._pixel_size.value:
            show_layer(self._viewer, prediction.to_input(prediction.grid_image), "preprocessed",
                       "image", metadata=meta, visible=False)
        maps = {"seed probability": prediction.seed_probability,
                "cytoplasm probability": prediction.cytoplasm_probability,
                "background probability": prediction.background_probability}
        for name, data in maps.items():
            colour, visible = PROBABILITY_LAYERS[name]
            layer = show_layer(self._viewer, prediction.to_input(data), name, "image", metadata=meta,
                               colormap=colour, blending="additive", contrast_limits=(0.0, 1.0),
                               visible=visible)
            layer.metadata[PREDICTION_KEY] = prediction
        self._runner.status.value = "probability maps ready"
