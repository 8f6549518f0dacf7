"""Helpers shared by the widgets: layer output without stacking copies, image input."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)


def show_layer(
    viewer: napari.viewer.Viewer,
    data: np.ndarray,
    name: str,
    kind: str = "labels",
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """Add a layer, or replace the data of the layer of that name (a re-run updates
    the stage's layer rather than stacking copies). Returns the layer."""
    metadata = dict(metadata or {})
    if name in viewer.layers:
        layer = viewer.layers[name]
        if type(layer).__name__.lower() == kind:  # napari.layers.Labels <-> "labels"
            layer.data = data
            layer.metadata.update(metadata)
            for key, value in kwargs.items():
                setattr(layer, key, value)
            return layer
        viewer.layers.remove(layer)
    add = getattr(viewer, f"add_{kind}")
    return add(data, name=name, metadata=metadata, **kwargs)


def one_channel(layer) -> np.ndarray:
    """A layer's pixels as a numpy array with one channel: the finest level of a
    multiscale layer; for RGB, the channel that carries signal."""
    from ..io import select_channel

    if layer is None:
        raise ValueError("no image layer selected: open an image first")
    data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
    if getattr(layer, "rgb", False):
        data, _ = select_channel(data)
    return data


def image_plane(layer, viewer=None) -> np.ndarray:
    """The 2-D plane an image layer shows now, as a numpy array.

    RGB layers give the channel that carries signal; a stack gives the plane at the
    viewer's current slider position (stacks are segmented plane by plane).
    """
    data = one_channel(layer)
    if data.ndim > 2:
        data = data[plane_index(layer, viewer, data.shape[:-2])]
    return data


def plane_index(layer, viewer, lead_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index, into a layer's leading (non-image) axes of shape ``lead_shape``, of the
    plane the viewer shows now (zeros without a viewer)."""
    if viewer is None or not lead_shape:
        return (0,) * len(lead_shape)
    point = layer.world_to_data(viewer.dims.point[-layer.ndim:])
    lead = point[len(point) - 2 - len(lead_shape) : len(point) - 2]
    return tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(lead, lead_shape, strict=True))


def pixel_size_of(layer) -> float | None:
    """µm per pixel from a layer's metadata or scale, else from the metadata of the TIFF
    it was opened from (None when unknown)."""
    if layer is None:
        return None
    size = layer.metadata.get("pixel_size_um") if hasattr(layer, "metadata") else None
    if size:
        return float(size)
    scale = getattr(layer, "scale", None)
    if scale is not None and len(scale) >= 2 and float(scale[-1]) != 1.0:
        return float(scale[-1])
    return _file_pixel_size(layer)


def _file_pixel_size(layer) -> float | None:
    """The pixel size the metadata of a layer's source TIFF states (None when none)."""
    from ..io import read_pixel_size

    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or Path(str(path)).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        return read_pixel_size(path)
    except (OSError, ValueError) as err:
        # A hint that fills in the pixel size field, not the image itself: a file moved
        # since it was opened, or non-square pixels, leave the field for the user to fill.
        logger.warning("pixel size of %s not taken from its file: %s", path, err)
        return None
