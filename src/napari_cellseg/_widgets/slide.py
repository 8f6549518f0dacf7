"""Whole slide: send an image layer (or the file behind it) to dask.distributed block by
block (:func:`napari_cellseg.segment_large`), with progress and Cancel; the result
comes back as a lazy multiscale labels layer over the slide.

Settings are tuned first where it is quick: "Tune on the view" copies the region in
view (at most 2048 x 2048 px of full resolution) to its own layer, where *Segment
cells* and its live sliders run as on any frame; with "Use the 'cells' layer's
parameters" the slide then runs with what was chosen there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)

from ._inputs import CELLS_LAYER, cells_layer_parameters, chosen_model, model_combo
from ._layers import finest_level, mark_ours, notify, remove_result, show_layer
from ._runner import Runner, reports_errors
from ._seed_controls import SeedControls

if TYPE_CHECKING:
    import napari

VIEW_LAYER = "slide view"
SLIDE_CELLS_LAYER = "slide cells"
MAX_VIEW = 2048  # px of the region copied for tuning
BLOCK_PARAMS = ("sensitivity", "h_probability", "cell_threshold", "min_cell_area")  # what block mode takes


def slide_source(layer):
    """What the engine reads for ``layer``: the file it was opened from (a zarr, OME-Zarr
    or TIFF: each worker reads its own blocks), else its data (level 0 of a multiscale;
    sent to every worker, so only for what fits in memory)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    file = Path(str(path)) if path else None
    if file is not None and (file.is_dir() or (file.exists() and file.suffix.lower() in (".tif", ".tiff", ".zarr"))):
        return str(path)
    data = finest_level(layer)
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is RGB: convert its file with 'napari-cellseg convert' "
                         "(one channel is kept) and open the result")
    return data


def view_region(layer, viewer, limit: int = MAX_VIEW) -> tuple[slice, slice]:
    """The full-resolution rows and columns of ``layer`` in view, at most ``limit`` px
    each way around the centre of the view."""
    shape = finest_level(layer).shape
    H, W = shape[-3:-1] if getattr(layer, "rgb", False) else shape[-2:]  # RGB: the channels come last
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9
    centre = np.asarray(layer.world_to_data(list(viewer.dims.point[:-2]) + list(camera.center[-2:])))[-2:]
    try:  # the displayed corners, in full-resolution pixels
        level = int(getattr(layer, "data_level", 0))
        corners = np.asarray(layer.corner_pixels, float)[:, -2:] * (2**level if layer.multiscale else 1)
        span = corners[1] - corners[0]
    except (AttributeError, IndexError, ValueError):
        span = np.array([limit, limit], float)
    out = []
    for c, s, n in zip(centre, span, (H, W), strict=True):
        half = int(min(max(s, 64), limit) // 2)
        lo = int(np.clip(round(float(c)) - half, 0, max(n - 2 * half, 0)))
        out.append(slice(lo, min(lo + 2 * half, n)))
    return out[0], out[1]


class SlideWidget(Container):
    """Segment a whole-slide image layer block by block on a dask cluster."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._image = create_widget(annotation="napari.layers.Image", label="Slide")
        self._output = FileEdit(mode="w", label="Output (.zarr)", nullable=True, filter="*.zarr")
        self._model = model_combo()
        self._block = SpinBox(value=4096, min=256, max=32768, step=256, label="Block (px)",
                              tooltip="one task per block; memory per worker grows with it (~3 GB at 4096)")
        self._halo = SpinBox(value=64, min=8, max=1024, step=8, label="Halo (px)",
                             tooltip="context around a block; widened by itself where a cell needs it")
        self._workers = SpinBox(value=0, min=0, max=256, label="Workers", tooltip="0: one per core")
        self._scheduler = LineEdit(value="", label="Dask scheduler", tooltip="e.g. tcp://host:8786")
        self._seeds = SeedControls()
        self._seeds.split.visible = False  # block mode runs the probability split only
        self._seeds.h.visible = False
        self._from_layer = CheckBox(value=True, text="Use the 'cells' layer's parameters")
        self._resume = CheckBox(value=True, text="Finish an earlier run of this output")
        self._overwrite = CheckBox(value=False, text="Replace the output")
        self._tune = PushButton(text="Tune on the view")
        self._runner = Runner("Segment slide", "Slide")
        self.extend([self._image, self._output, self._model, self._block, self._halo, self._workers,
                     self._scheduler, self._seeds.sensitivity, self._seeds.h_probability, self._from_layer,
                     self._resume, self._overwrite, self._tune, *self._runner.widgets])
        self._tune.changed.connect(reports_errors(self.tune_on_view, "Tune on the view", self._runner.status))
        self._runner.on_run(self.run)
        self.result = None

    def _layer(self):
        layer = self._image.value
        if layer is None:
            raise ValueError("choose the slide's image layer")
        return layer

    def tune_on_view(self, *_):
        """Copy the region in view to the layer 'slide view' (same place on the canvas)."""
        layer = self._layer()
        rows, cols = view_region(layer, self._viewer)
        data = layer.data[0] if layer.multiscale else layer.data
        # An RGB slide's channels are its last axis: the rows and columns come before it.
        crop = np.asarray(data[..., rows, cols, :] if getattr(layer, "rgb", False) else data[..., rows, cols])
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float) + scale * [rows.start, cols.start]
        view = show_layer(self._viewer, crop, VIEW_LAYER, "image", scale=tuple(scale),
                          translate=tuple(translate))
        view.metadata["slide_region"] = {"rows": [rows.start, rows.stop], "cols": [cols.start, cols.stop]}
        self._runner.status.value = (f"copied rows {rows.start}-{rows.stop}, columns {cols.start}-{cols.stop} "
                                     f"to '{VIEW_LAYER}': tune it with Segment cells, then Segment slide")
        return view

    def params(self) -> dict:
        saved = cells_layer_parameters(self._viewer, self._model.value) if self._from_layer.value else None
        source = saved or self._seeds.params()
        if saved and saved.get("seed_split") == "shape":
            raise ValueError("the 'cells' layer was made with the shape split, which needs the whole "
                             "image: choose the probability split there, or untick 'Use the cells "
                             "layer's parameters'")
        return {k: source[k] for k in BLOCK_PARAMS if source.get(k) is not None}

    def _check_tuned_scale(self) -> str | None:
        """Say (a notification; returned) when the 'cells' layer was tuned at another zoom
        than the model's grid, the only one a slide runs at (a pixel size given, estimated
        or from a cell diameter): the slide's cells may then differ from the tuned ones."""
        from ..model.store import resolve_model

        if CELLS_LAYER not in self._viewer.layers:
            return None
        meta = self._viewer.layers[CELLS_LAYER].metadata
        source = meta.get("scale_from") or meta.get("pixel_size_from")
        zoom_px = meta.get("scale_pixel_size_um") if meta.get("scale_from") else meta.get("pixel_size_um")
        if not zoom_px:
            return None
        model_px = resolve_model(chosen_model(self._model))[1].pixel_size
        if not model_px or abs(float(zoom_px) / float(model_px) - 1) <= 0.01:
            return None
        text = (f"the '{CELLS_LAYER}' layer was tuned at the zoom of {float(zoom_px):.3g} µm per pixel "
                f"({source or 'given'}); a slide runs at the model's {float(model_px):g} µm: its cells may differ "
                f"from the tuned ones. Tune '{VIEW_LAYER}' with the pixel size set to {float(model_px):g}")
        notify(text)
        return text

    def run(self, *_):
        from ..workflows.large import iter_segment_large

        layer = self._layer()
        if self._output.value is None or str(self._output.value).strip() in ("", "."):
            raise ValueError("choose where to write the output (.zarr)")
        if self._workers.value and self._scheduler.value.strip():
            raise ValueError("give either a number of local workers or a dask scheduler, not both")
        out = Path(self._output.value)
        if out.exists() and not (self._resume.value or self._overwrite.value):
            raise FileExistsError(f"{out} exists: tick 'Finish an earlier run' or 'Replace the output'")
        params = self.params()
        if self._from_layer.value:
            self._check_tuned_scale()
        self._target = layer
        return self._runner.start(
            iter_segment_large, slide_source(layer), out, block=int(self._block.value),
            halo=int(self._halo.value), workers=int(self._workers.value) or None,
            scheduler=self._scheduler.value.strip() or None, resume=bool(self._resume.value),
            # The CPU, as segment-large's default: block-wise CUDA has not been run (Known limits).
            overwrite=bool(self._overwrite.value), model=chosen_model(self._model), device="cpu",
            on_done=self._on_done, **params)

    def _on_done(self, result) -> None:
        from .._reader import read_large

        self.result = result
        data, meta, _ = read_large(str(result.path))[-1]  # the labels, lazy and multiscale
        layer = self._target
        meta.update(scale=tuple(layer.scale[-2:]), translate=tuple(layer.translate[-2:]))
        name = meta.pop("name")
        remove_result(self._viewer, SLIDE_CELLS_LAYER)
        mark_ours(self._viewer.add_labels(data, name=SLIDE_CELLS_LAYER, **meta))
        healed = f", {len(result.healed)} blocks with a wider halo" if result.healed else ""
        self._runner.status.value = (f"{result.n_cells} cells in {result.n_blocks} blocks "
                                     f"({len(result.computed)} computed{healed}) in {result.seconds:.0f} s "
                                     f"-> {result.path} ('{name}')")
