"""Segment cells: the one-click path (image -> cells with the shipped model), then
h / sensitivity sliders that re-segment live from the cached prediction.

Nothing heavy runs on the GUI thread: the prediction worker also builds the seed
hierarchy and basin graph for the current settings; a slider move re-segments at once
when those are built (milliseconds), else in its own worker (e.g. after switching to the
shape split). On a stack only the plane in view is re-segmented; the others are marked
stale and re-segmented when the user moves to them.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, FloatSpinBox

from ..progress import Progress
from ._inputs import (
    AUTO_SOURCE,
    CELLS_LAYER,
    NO_SCALE_REQUEST,
    ModelInputs,
    channel_shape,
    image_data,
    model_metadata,
    scale_metadata,
)
from ._layers import plane_index, show_layer
from ._runner import LiveUpdate, Runner, reports_errors, show_warnings, warning_note
from ._seed_controls import SeedControls

if TYPE_CHECKING:
    import napari


def predict_and_segment(stack: np.ndarray, pixel_size, model, device, params: dict,
                        scale_kwargs: dict | None = None,
                        ) -> Generator[Progress, None, tuple[list, list[np.ndarray], dict]]:
    """Predict every plane, build the hierarchies for ``params`` and segment every plane
    with them, all off the GUI thread; returns (predictions, cells per plane, params).
    ``scale_kwargs``: ``cell_diameter_px`` instead of a pixel size (``ModelInputs``)."""
    from ..pipeline import iter_predict_planes

    predictions = yield from iter_predict_planes(stack, pixel_size, model, device, warm=params,
                                                 **(scale_kwargs or {}))
    cells = []
    for i, pred in enumerate(predictions):
        yield Progress(i, len(predictions), "planes", message="segmenting")
        cells.append(pred.segment(**params))
    return predictions, cells, params


def read_predict_and_segment(layer, *args, **kwargs):
    """:func:`predict_and_segment` on ``layer``'s pixels, read in the worker: a large RGB
    layer's channel choice, or a lazy (dask, zarr) layer's read, does not freeze the viewer."""
    return (yield from predict_and_segment(image_data(layer), *args, **kwargs))


class SegmentCellsWidget(Container):
    """Image -> cells in one click; then move h and sensitivity and watch the cells."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._inputs = ModelInputs()
        self._image, self._pixel_size = self._inputs.image, self._inputs.pixel_size
        self._model, self._device = self._inputs.model, self._inputs.device
        self._runner = Runner("Segment cells", "Segmentation")
        self._live = LiveUpdate("Re-segmentation", self._runner.status)
        self._seeds = SeedControls()
        self._min_area = FloatSpinBox(value=0.0, min=0.0, max=10000.0, step=1.0,
                                      label="Min cell area (µm²)", tooltip="0: a fifth of a typical cell")
        self.extend([*self._inputs.widgets, *self._runner.widgets,
                     *self._seeds.widgets, self._min_area])
        self.predictions: list = []
        self._warnings: list[str] = []  # the last run's (show_warnings)
        self._scale_request: tuple = NO_SCALE_REQUEST  # ModelInputs.scale_request of the last run
        self._run_model: dict = {"model": None}  # the model of the last run (model_metadata)
        self._like = None  # the image layer of the last run: the cells lie on it
        self._cells: np.ndarray | None = None  # (planes, M, N) labels shown
        self._segmented_with: list[dict | None] = []  # per plane: the parameters of its labels
        self._touched = False  # has the user moved a slider?
        self._runner.on_run(self.run)
        from superqt.utils import qdebounced

        # A short debounce: dragging a slider re-segments once it pauses, not per pixel.
        self._debounced_update = qdebounced(
            reports_errors(self.update_cells, "Re-segmentation", self._runner.status), timeout=40)
        for signal in (*self._seeds.changed, self._min_area.changed):
            signal.connect(self._on_param)
        viewer.dims.events.current_step.connect(self._on_plane)
        # Closed: the plane slider must not re-segment into the viewer for a widget that is gone.
        self.native.destroyed.connect(lambda *_: viewer.dims.events.current_step.disconnect(self._on_plane))

    def _on_param(self, *_) -> None:
        self._touched = True
        if self.predictions:
            self._debounced_update()

    def _on_plane(self, *_) -> None:
        if len(self.predictions) > 1 and self.current_plane() in self.stale_planes:
            self._debounced_update()

    def params(self) -> dict:
        p = self._seeds.params()
        if self._min_area.value > 0:
            p["min_cell_area"] = float(self._min_area.value)
        return p

    @property
    def stale_planes(self) -> set[int]:
        """Planes whose labels were made with other parameters than the current ones."""
        params = self.params()
        return {i for i, used in enumerate(self._segmented_with) if used != params}

    def current_plane(self) -> int:
        """The plane of the stack in view (0 for a 2-D image)."""
        if len(self.predictions) < 2:
            return 0
        layers = self._viewer.layers
        layer = layers[CELLS_LAYER] if CELLS_LAYER in layers else None  # noqa: SIM401 (a LayerList has no get)
        if layer is None or layer.ndim != 3:
            # Before the stack's cells layer exists (the first run): the image's plane in view.
            layer = self._like if self._like is not None and self._like in layers else None
        if layer is None:
            return 0
        return plane_index(layer, self._viewer, (len(self.predictions),))[0]

    def run(self, *_):
        """Start the prediction in a worker; cells appear when it returns."""
        from functools import partial

        layer = self._image.value
        stack = len(channel_shape(layer)) == 3  # checked here, read in the worker
        model = self._inputs.model_name
        # Untouched sliders: the model's own tuned defaults ({} = the model's defaults).
        params = self.params() if self._touched else {}
        on_done = partial(self._on_predicted, source=layer.name, stack=stack,
                          scale_request=self._inputs.scale_request(), model=model, like=layer)
        return self._runner.start(read_predict_and_segment, layer, self._inputs.pixel_size_um, model,
                                  self._device.value, params, self._inputs.scale_kwargs, on_done=on_done)

    def _on_predicted(self, result, source: str, stack: bool, scale_request: tuple = NO_SCALE_REQUEST,
                      model: str | None = None, like=None) -> None:
        predictions, cells, params = result
        if like is not None and like not in self._viewer.layers:
            self._runner.status.value = (f"the image layer {source!r} was removed while it was segmented: "
                                         "its cells are not shown")
            return
        self._live.drop()  # a re-segmentation still running belongs to the old prediction
        self.predictions, self._source, self._stack = predictions, source, stack
        # What the run used, not what the model list or the layer list shows later: for
        # "auto", the model chosen (once per stack: pipeline.iter_predict_planes).
        self._run_model = model_metadata(predictions[0], model) if predictions else {"model": model}
        self._like = like
        self._scale_request = scale_request
        if predictions and not self._touched:
            # The model's own tuned defaults, the first time only: later runs keep the
            # user's settings.
            self._seeds.set_defaults(predictions[0].defaults)
        if not params:  # what the worker segmented with, in the widget's terms
            params = {k: getattr(predictions[0].defaults, k) for k in self.params()}
        self._cells = np.stack(cells)
        self._segmented_with = [params] * len(cells)
        # A notification each (the log alone is not seen in the viewer); the run's, a
        # stack's with their plane, are what the layer and the status line keep.
        self._warnings = show_warnings(predictions)
        self._show()
        if self.stale_planes:  # the sliders moved while the model ran
            self.update_cells()

    def update_cells(self, *_) -> None:
        """Re-segment the plane in view with the current sliders, from the cache."""
        if not self.predictions:
            return
        plane, params = self.current_plane(), self.params()
        if plane not in self.stale_planes:
            return
        pred = self.predictions[plane]

        def shown(cells: np.ndarray) -> None:
            if params == self.params():  # else the sliders moved on: a newer request follows
                # A new array, not a write into the one the layer shows: a layer the user
                # painted on is kept as it is (show_layer), not overwritten in place.
                self._cells = self._cells.copy()
                self._cells[plane] = cells
                self._segmented_with[plane] = params
                self._show()

        self._live.request(pred, pred.params(**params), lambda: pred.segment(**params), shown)

    def _show(self):
        data = self._cells if self._stack else self._cells[0]
        plane = self.current_plane()
        used = self._segmented_with[plane]
        metadata = {
            "stage": "cells", "parameters": used, "source": self._source,
            # False: the model's own defaults, no slider moved (Batch's 'auto' then stays auto).
            "parameters_tuned": bool(self._touched),
            # Every parameter, the model's defaults applied (what Export records).
            "parameters_used": self.predictions[plane].params(**(used or {})).to_dict(),
            **self._run_model, **scale_metadata(self.predictions[plane], self._scale_request),
            "stale_planes": sorted(self.stale_planes)}
        metadata.pop("warnings", None)
        if self._warnings:
            metadata["warnings"] = list(self._warnings)
        layer = show_layer(self._viewer, data, CELLS_LAYER, "labels", metadata=metadata, like=self._like)
        n = int(self._cells[plane].max())
        size, source = self.predictions[plane].pixel_size, self._scale_request[0]
        if source and size is None:  # no estimate used (a blank or tiny image): its warning says why
            note = " (the model's pixel size: no estimate used)"
        elif source == AUTO_SOURCE:  # the first plane's estimate holds for the whole stack
            scale = next((p.scale for p in self.predictions if p.scale is not None), None)
            if scale is not None and scale.kept_model_scale:  # said, not shown as if measured
                note = (f" (pixel size estimated: {scale.measured_pixel_size:.3g} µm, within a factor √2 of "
                        f"the model's: used at its {size:.3g} µm)")
            else:
                note = f" (pixel size estimated: {size:.3g} µm)"
        else:
            # a diameter: the zoom it implies (the pixel size field still measures the µm)
            note = f" (zoom as for {size:.3g} µm/px, from the {source})" if source else ""
        self._runner.status.value = (
            f"{n} cells" + (f" in plane {plane + 1} of {len(self._cells)} planes" if self._stack else "") + note
            + warning_note(self._warnings))
        return layer
