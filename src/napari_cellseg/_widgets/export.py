"""Export: labels (TIFF or 16-bit PNG), the per-cell table (CSV) and the parameters
(JSON), never replacing an existing file unless asked to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    LineEdit,
    PushButton,
    create_widget,
)

from ..io import _jsonable, write_results
from ._inputs import LayerDefaults, image_data, pixel_size_field, result_layers, show_pixel_size
from ._layers import image_plane, layer_array, pixel_size_of
from ._runner import reports_errors, status_label

if TYPE_CHECKING:
    import napari


class ExportWidget(Container):
    """Write a labels layer, its cell table and its parameters to a folder."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._labels = create_widget(label="Labels", annotation="napari.layers.Labels")
        self._image = create_widget(label="Intensities from", annotation="napari.layers.Image",
                                    options={"nullable": True})
        self._folder = FileEdit(mode="d", label="Folder", nullable=True)  # empty until chosen
        self._name = LineEdit(value="", label="Base name", tooltip="empty: the labels layer's source")
        self._format = ComboBox(value=".tif", choices=(".tif", ".png"), label="Labels format")
        self._pixel_size = pixel_size_field()
        self._overwrite = CheckBox(value=False, text="Replace existing files")
        self._button = PushButton(text="Export")
        self._status = status_label()
        self.extend([self._labels, self._image, self._folder, self._name, self._format,
                     self._pixel_size, self._overwrite, self._button, self._status])
        self._button.changed.connect(reports_errors(self.export, "Export", self._status))
        # The pixel size field follows the layers (their metadata can change after a re-run
        # with another pixel size) until the user types a value: _filled is what it was
        # last filled with, so a value that differs from it is the user's.
        self._filled = float(self._pixel_size.value)
        self._labels.changed.connect(self._on_labels)
        self._image.changed.connect(self._on_labels)
        self._defaults = LayerDefaults({"labels": self._labels, "image": self._image}, self._pick_defaults)
        self._defaults.run(lambda: None)
        self._on_labels()

    def reset_choices(self, *args) -> None:
        """The layer lists follow the viewer; an untouched choice follows the default."""
        self._defaults.run(lambda: super(ExportWidget, self).reset_choices(*args))

    def _pick_defaults(self, user_chose: set[str]) -> None:
        """The cells layer (or another result layer), not a ground-truth layer; the
        intensities from the image it was segmented from (its ``source``)."""
        if "labels" not in user_chose:
            candidates = result_layers(self._labels.choices)
            if candidates:
                self._labels.value = candidates[0]
        layer = self._labels.value
        source = layer.metadata.get("source") if layer is not None else None
        if "image" not in user_chose and source:
            match = [im for im in self._image.choices if getattr(im, "name", None) == source]
            if match:
                self._image.value = match[0]

    def _layers_pixel_size(self) -> float:
        """The labels layer's pixel size (its metadata), else the image layer's; 0: unknown."""
        layer = self._labels.value
        size = (layer.metadata.get("pixel_size_um") if layer is not None else None) or pixel_size_of(self._image.value)
        return float(size) if size else 0.0

    def _user_typed_pixel_size(self) -> bool:
        return float(self._pixel_size.value) != self._filled

    def _on_labels(self, *_) -> None:
        if not self._user_typed_pixel_size():
            self._filled = show_pixel_size(self._pixel_size, self._layers_pixel_size())  # as shown (4 decimals)

    def _base(self) -> str:
        if self._name.value.strip():
            return self._name.value.strip()
        layer = self._labels.value
        base = f"{layer.metadata.get('source', layer.name)}_{layer.name}"
        return "".join("_" if c in ' /\\:' else c for c in base)  # never a path out of the folder

    def export(self, *_) -> list[Path]:
        """Write the files (:func:`napari_cellseg.io.write_results`); returns their paths.
        Refuses, before writing anything, when one exists and "Replace existing files" is off."""
        layer = self._labels.value
        if layer is None:
            raise ValueError("choose a labels layer to export")
        if self._folder.value is None or not str(self._folder.value).strip():
            raise ValueError("choose a folder to export to")
        folder = Path(self._folder.value)
        labels = layer_array(layer)
        if labels.ndim not in (2, 3):
            raise ValueError(f"labels of shape {labels.shape}: napari-cellseg exports 2-D labels "
                             "or a (planes, M, N) stack")
        stale = layer.metadata.get("stale_planes") if labels.ndim == 3 else None
        if stale:
            # The record holds one set of parameters: planes cut with older slider settings
            # would be exported under the new ones.
            raise ValueError(f"planes {', '.join(map(str, stale))} of {layer.name!r} still show cells from "
                             "earlier slider settings: step through them (each is re-segmented when "
                             "shown) or press Segment cells again, then export")
        image = None
        if self._image.value is not None:
            # A stack's intensities are the image's planes; 2-D labels take the plane in view.
            # (2-D labels cut from one plane of a stack record it: that plane, not the one in view).
            image = (image_data(self._image.value) if labels.ndim == 3
                     else image_plane(self._image.value, self._viewer, plane=layer.metadata.get("plane")))
            if image.shape != labels.shape:
                raise ValueError(f"image {self._image.value.name!r} {image.shape} and labels "
                                 f"{labels.shape} differ in shape")
        # A value the user typed wins; else the layers' own, read now (a re-run with another
        # pixel size changes the cells layer's metadata, not the layer the field was filled from).
        typed = self._user_typed_pixel_size()
        self._on_labels()
        pixel_size = (float(self._pixel_size.value) if typed or not self._filled else self._layers_pixel_size()) or None
        from .. import __version__

        record = {"labels_layer": layer.name, "image_layer": getattr(self._image.value, "name", None),
                  "pixel_size_um": pixel_size, "version": __version__,
                  "model": _model_record(layer.metadata.get("model")),
                  "metadata": {k: v for k, v in layer.metadata.items() if _is_jsonable(v)}}
        paths = write_results(folder, self._base(), labels, image, pixel_size, record,
                              labels_format=self._format.value, overwrite=bool(self._overwrite.value))
        self._status.value = f"wrote {len(paths)} files to {folder}"
        return list(paths.values())


def _model_record(name) -> dict | None:
    """The name, weight file and SHA-256 of the model a layer records (None: no model,
    e.g. classic cells or hand-drawn labels; a model no longer installed keeps its name)."""
    if not name:
        return None
    from ..model.store import model_record

    try:
        return model_record(name)
    except (OSError, ValueError) as err:  # removed or renamed since: the name is what is known
        return {"name": str(name), "path": None, "sha256": None, "note": str(err)}


def _is_jsonable(value) -> bool:
    """True when ``write_results`` can record ``value`` (numpy scalars, tuples and paths too)."""
    try:
        json.dumps(value, default=_jsonable)
    except (TypeError, ValueError):
        return False
    return True
