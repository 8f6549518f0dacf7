"""Batch: the current parameters over a folder of images, in the background."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    LineEdit,
    SpinBox,
)

from ..batch import recorded_warnings
from ..io import list_images
from ._inputs import (
    cells_layer_parameters,
    chosen_model,
    diameter_fields,
    model_combo,
    pixel_size_field,
    tuned_model,
)
from ._runner import Runner
from ._seed_controls import SeedControls

if TYPE_CHECKING:
    import napari


class BatchWidget(Container):
    """Segment every image of a folder; write masks, cell tables and parameters."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._input = FileEdit(mode="d", label="Images folder", nullable=True)  # empty until chosen
        self._output = FileEdit(mode="d", label="Output folder", nullable=True)
        self._model = model_combo(auto=True)  # a model trained in the viewer shows up
        self._pixel_size = pixel_size_field("0: each file's own, else estimated from the image")
        # As in Segment cells: the cells' size sets the zoom, in each image's pixels or in µm
        # (with the pixel size above or each file's own); the pixel size still measures µm.
        self._cell_diameter, self._diameter_unit = diameter_fields("the cells' typical diameter; 0: not used")
        self._same_scale = CheckBox(
            value=False, text="One scale for all images",
            tooltip="one experiment's images, taken at one scale: those whose scale is estimated share "
                    "one, the median of up to 8 images' estimates (and one model with 'auto'), so that "
                    "their µm compare; not with a pixel size or cell diameter")
        self._seeds = SeedControls()
        self._from_layer = CheckBox(value=True, text="Use the 'cells' layer's parameters")
        self._overwrite = CheckBox(value=False, text="Replace existing files")
        self._resume = CheckBox(value=True, text="Skip images already done with these settings")
        self._workers = SpinBox(value=0, min=0, max=256, label="Workers",
                                tooltip="0: one image after another in napari; N: one task per image on "
                                        "a local dask cluster of N worker processes")
        self._scheduler = LineEdit(value="", label="Dask scheduler",
                                   tooltip="e.g. tcp://host:8786: run on that cluster (its workers must "
                                           "read the images and write the output folder)")
        self._runner = Runner("Run batch", "Batch")
        self.extend([self._input, self._output, self._model, self._pixel_size, self._cell_diameter,
                     self._diameter_unit, self._same_scale, *self._seeds.widgets,
                     self._from_layer, self._overwrite, self._resume, self._workers, self._scheduler,
                     *self._runner.widgets])
        self._runner.on_run(self.run)
        self.results = None

    def run_model(self) -> str:
        """The model the run uses: the list's; with 'auto' and the cells layer's parameters,
        the model they were tuned with (they mean something else on another's maps), as
        the status line says."""
        from ..choose import AUTO

        name = chosen_model(self._model)
        if name == AUTO and self._from_layer.value:
            return tuned_model(self._viewer) or name
        return name

    def params(self) -> dict:
        saved = cells_layer_parameters(self._viewer, self.run_model()) if self._from_layer.value else None
        return saved or self._seeds.params()

    def run(self, *_):
        from ..batch import iter_segment_files

        if self._input.value is None:
            raise ValueError("choose the folder of images to segment")
        if self._output.value is None:
            raise ValueError("choose an output folder")
        if self._workers.value and self._scheduler.value.strip():
            raise ValueError("give either a number of local workers or a dask scheduler, not both")
        if self._same_scale.value and (self._pixel_size.value or self._cell_diameter.value):
            raise ValueError("'One scale for all images' estimates the images' scale: set the pixel "
                             "size and the cell diameter to 0, or untick it")
        images = list_images(Path(self._input.value))
        if not images:
            raise ValueError(f"no TIFF / PNG images in {self._input.value}")
        diameter = {}
        if self._cell_diameter.value:
            unit = "px" if self._diameter_unit.value == "px" else "um"
            diameter = {f"cell_diameter_{unit}": float(self._cell_diameter.value)}
        from functools import partial

        out = Path(self._output.value)
        model = self.run_model()
        return self._runner.start(
            iter_segment_files, images, out, "unet", self.params(),
            pixel_size=float(self._pixel_size.value) or None, model=model, **diameter,
            overwrite=bool(self._overwrite.value), resume=bool(self._resume.value),
            same_scale=bool(self._same_scale.value),
            workers=int(self._workers.value) or None, scheduler=self._scheduler.value.strip() or None,
            on_done=partial(self._on_done, out=out,
                            tuned_model=model if model != chosen_model(self._model) else None))

    def _on_done(self, results, out=None, tuned_model: str | None = None) -> None:
        self.results = results
        # The folder the run wrote to, not the one the field shows now; the model the run
        # took from the cells layer instead of 'auto', decided when it started.
        used = f" (model {tuned_model}: the cells layer's parameters were tuned with it)" if tuned_model else ""
        folder = out if out is not None else self._output.value
        warned = recorded_warnings([p for p, _ in results], folder)
        note = ""
        if warned:  # the workers' logs are not seen: the records say it, and so does the viewer
            from napari.utils.notifications import show_warning

            first, texts = next(iter(warned.items()))
            note = (f"; {len(warned)} with warnings (each in its _params.json, 'warnings'), e.g. "
                    f"{first.name}: {texts[0]}")
            show_warning(f"{len(warned)} of {len(results)} images have warnings, e.g. {first.name}: "
                         f"{texts[0]} (each image's _params.json lists its own)")
        self._runner.status.value = (f"{len(results)} images, {sum(n for _, n in results)} cells "
                                     f"-> {folder}{used}{note}")
