"""Preprocess + Predict (UNet) stage: probability maps as layers, in a worker that also
builds the seed hierarchy and basin graph for the model's defaults (so the Seeds and
Cells widgets start live)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, FloatSpinBox

from ._inputs import (
    NO_SCALE_REQUEST,
    PREDICTION_KEY,
    PREPROCESSED_LAYER,
    PROBABILITY_LAYERS,
    ModelInputs,
    model_metadata,
    scale_metadata,
)
from ._layers import image_plane, plane_record, remove_result, show_layer
from ._runner import Runner, show_warnings, warning_note

if TYPE_CHECKING:
    import napari


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
        self._runner.on_run(self.run)
        self.prediction = None
        self._scale_request: tuple = NO_SCALE_REQUEST

    def run(self, *_):
        from functools import partial

        from ..pipeline import iter_predict

        image = image_plane(self._image.value, self._viewer)
        self._scale_request = self._inputs.scale_request()
        tophat = float(self._tophat.value) or None
        # What this run used, recorded when it ends (the fields may have changed by then).
        run = {"source": self._image.value.name, "model": self._inputs.model_name, "tophat_um": tophat,
               "like": self._image.value, **plane_record(self._image.value, self._viewer)}
        # warm={}: the hierarchies for the model's own defaults are built in the worker.
        return self._runner.start(
            iter_predict, image, self._inputs.pixel_size_um, self._inputs.model_name,
            self._device.value, tophat_um=tophat, warm={},
            **self._inputs.scale_kwargs, on_done=partial(self._on_done, run=run))

    def _on_done(self, prediction, run: dict | None = None) -> None:
        self.prediction = prediction
        run = dict(run or {})
        like = run.pop("like", None)
        # The pixel size given, estimated, from a cell diameter or None (the model's); the
        # model the prediction ran (the one chosen, for "auto").
        meta = {"stage": "predict", **run, **scale_metadata(prediction, self._scale_request),
                **model_metadata(prediction, run.get("model"))}
        if prediction.grid_image.shape != prediction.image.shape or run.get("tophat_um"):  # resampled or filtered
            show_layer(self._viewer, prediction.to_input(prediction.grid_image), PREPROCESSED_LAYER,
                       "image", metadata=meta, like=like, visible=False)
        elif PREPROCESSED_LAYER in self._viewer.layers:  # an earlier run's: not this prediction's input
            remove_result(self._viewer, PREPROCESSED_LAYER)
        for name, (attribute, colour, visible) in PROBABILITY_LAYERS.items():
            if getattr(prediction, attribute) is None:  # the touch map of a 3-class model
                if name in self._viewer.layers:  # left by a 4-class model: not this prediction's
                    remove_result(self._viewer, name)
                continue
            data = prediction.to_input(getattr(prediction, attribute))
            layer = show_layer(self._viewer, data, name, "image", metadata=meta, like=like, colormap=colour,
                               blending="additive", contrast_limits=(0.0, 1.0), visible=visible)
            layer.metadata[PREDICTION_KEY] = prediction
        # A notification each: the log alone is not seen in the viewer.
        self._runner.status.value = "probability maps ready" + warning_note(show_warnings([prediction]))

