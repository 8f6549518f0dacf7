"""Helpers shared by the widgets: layer output without stacking copies, image input."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)


# The layers show_layer made, and those of them the user has painted on (weak: a layer
# the user deletes is forgotten).
_OURS: weakref.WeakSet = weakref.WeakSet()
_EDITED: weakref.WeakSet = weakref.WeakSet()


def _watch_edits(layer) -> None:
    paint = getattr(layer.events, "paint", None)  # labels layers: a brush, fill or erase
    if paint is not None:
        ref = weakref.ref(layer)
        paint.connect(lambda *_: _EDITED.add(ref()) if ref() is not None else None)


def placement(like, ndim: int) -> dict[str, tuple]:
    """``scale`` and ``translate`` for an ``ndim``-D result of layer ``like`` (its last
    ``ndim`` axes; leading axes it lacks get 1 and 0), so that the result lies on it."""
    if like is None:
        return {}
    scale, translate = list(like.scale), list(like.translate)
    pad = max(ndim - len(scale), 0)
    return {"scale": tuple([1.0] * pad + scale[len(scale) - ndim + pad:]),
            "translate": tuple([0.0] * pad + translate[len(translate) - ndim + pad:])}


def show_layer(
    viewer: napari.viewer.Viewer,
    data: np.ndarray,
    name: str,
    kind: str = "labels",
    metadata: dict[str, Any] | None = None,
    like=None,
    **kwargs: Any,
):
    """Add a layer, or replace the data and metadata of the layer of that name (a re-run
    updates the stage's layer rather than stacking copies). Returns the layer.

    ``like``: the layer the result was computed from; its scale and translation place the
    result on it. A layer of that name that this function did not make, or that the user
    has painted on since, is never replaced: it is renamed (``<name> (edited)`` or
    ``<name> (kept)``), said in a notification, and the result gets a new layer.
    """
    metadata = dict(metadata or {})
    kwargs = {**placement(like, np.ndim(data)), **kwargs}
    if name in viewer.layers and not _set_aside(viewer.layers[name], name, "the new result is"):
        layer = viewer.layers[name]
        if type(layer).__name__.lower() == kind and getattr(layer, "rgb", False) == _is_rgb(data, kind, kwargs):
            # Same kind and the same colour model (napari fixes a layer's rgb when it is made):
            layer.data = data
            layer.metadata = metadata  # replaced: keys of an earlier run must not outlive it
            for key, value in kwargs.items():
                setattr(layer, key, value)
            return layer
        viewer.layers.remove(layer)
    return mark_ours(getattr(viewer, f"add_{kind}")(data, name=name, metadata=metadata, **kwargs))


def _set_aside(layer, name: str, then: str) -> bool:
    """Rename a layer this module did not make, or that the user has painted on, to
    ``<name> (edited)`` / ``<name> (kept)``, said in a notification; True when it did."""
    if layer not in _EDITED and layer in _OURS:
        return False
    edited = layer in _EDITED
    _EDITED.discard(layer)
    _OURS.discard(layer)
    layer.name = f"{name} ({'edited' if edited else 'kept'})"  # napari keeps names unique
    notify(f"the layer {name!r} {'was edited by hand' if edited else 'was not made by napari-cellseg'}: "
           f"kept as {layer.name!r}; {then} {name!r}")
    return True


def remove_result(viewer, name: str) -> None:
    """Remove an earlier result layer of that name (one that no longer belongs to the
    new run); a layer of the user's of that name is kept, renamed (:func:`_set_aside`)."""
    if name in viewer.layers and not _set_aside(viewer.layers[name], name, "napari-cellseg's results no longer use"):
        viewer.layers.remove(name)


def mark_ours(layer):
    """Count a layer added directly (not by :func:`show_layer`) as napari-cellseg's own result."""
    _OURS.add(layer)
    _watch_edits(layer)
    return layer


def _is_rgb(data, kind: str, kwargs: dict) -> bool:
    """Whether napari would make ``data`` an RGB layer (its guess: a last axis of 3 or 4)."""
    if kind != "image":
        return False
    return bool(kwargs.get("rgb", np.ndim(data) > 2 and np.shape(data)[-1] in (3, 4)))


def notify(message: str) -> None:
    """Log ``message`` and show it in napari's notification area."""
    logger.warning(message)
    try:
        from napari.utils.notifications import show_info

        show_info(message)
    except ImportError:  # pragma: no cover - napari is there whenever a widget is
        pass


def one_channel(layer) -> np.ndarray:
    """A layer's pixels as a numpy array with one channel: the finest level of a
    multiscale layer; for RGB, the channel that carries signal."""
    from ..io import select_channel

    if layer is None:
        raise ValueError("no image layer selected: open an image first")
    data = layer_array(layer)
    if getattr(layer, "rgb", False):
        data, _ = select_channel(data, rgb=True)  # also an RGB stack, or one with a leading axis of 1
    return data


def finest_level(layer):
    """A layer's data, not read: the finest level of a multiscale layer (``np.asarray``
    of napari's multiscale data gives the coarsest)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_array(layer) -> np.ndarray:
    """A layer's pixels as a numpy array (:func:`finest_level`)."""
    return np.asarray(finest_level(layer))


def plane_record(layer, viewer) -> dict:
    """``{"plane": [...]}`` for a result cut from the plane in view of a stack, else {}:
    Export and Train then take the intensities from that plane, not the one in view later."""
    plane = view_plane(layer, viewer)
    return {} if plane is None else {"plane": plane}


def view_plane(layer, viewer) -> list[int] | None:
    """The plane of a stack layer the viewer shows now (its indices into the leading
    axes, as a result's metadata records it under ``"plane"``); None for a 2-D layer."""
    if layer is None:
        return None
    data = finest_level(layer)
    lead = data.shape[: data.ndim - (3 if getattr(layer, "rgb", False) else 2)]
    return list(plane_index(layer, viewer, lead)) if lead else None


def plane_of(lead: tuple[int, ...], plane) -> tuple[int, ...] | None:
    """A recorded ``plane`` as an index into leading axes of shape ``lead``; None when it
    is not one of them (the caller says so, naming its layer)."""
    if len(plane) == len(lead) and all(0 <= int(i) < n for i, n in zip(plane, lead, strict=True)):
        return tuple(int(i) for i in plane)
    return None


def image_plane(layer, viewer=None, plane=None) -> np.ndarray:
    """The 2-D plane an image layer shows now, as a numpy array.

    RGB layers give the channel that carries signal; a stack gives the plane at the
    viewer's current slider position (stacks are segmented plane by plane), or ``plane``
    (a result's recorded ``"plane"``: the one it was cut from) when given.
    """
    from ..io import select_channel

    if layer is None:
        raise ValueError("no image layer selected: open an image first")
    data = finest_level(layer)
    rgb = bool(getattr(layer, "rgb", False))
    spatial = 3 if rgb else 2
    if data.ndim > spatial:
        lead = data.shape[:-spatial]
        index = plane_index(layer, viewer, lead) if plane is None else plane_of(lead, plane)
        if index is None:
            raise ValueError(f"the labels were cut from plane {list(plane)} of a stack; {layer.name!r} "
                             f"has planes {list(lead)}: choose the image they were segmented from")
        # The plane first, then the pixels: a lazy (dask, zarr) time-lapse is not read whole
        # on the GUI thread to show one plane.
        data = data[index]
    data = np.asarray(data)
    if rgb:
        data, _ = select_channel(data, rgb=True)
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
