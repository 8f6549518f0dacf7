"""One input-validation layer for the Python API, the CLI and the widgets.

Every check runs before any work and raises a ``ValueError`` (``TypeError`` for a
wrong kind of object) that names the argument, the value and what is accepted, in the
style of scikit-image. The shells only catch and show these.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

# Rescaling to the model's pixel size beyond this factor either way is refused: the
# image would shrink below what the network can see or grow past any real use.
MAX_RESCALE = 8.0
# Peak memory of a segmentation per pixel of the model grid (measured 130-200 B/px,
# FINDINGS.md), with room to spare.
BYTES_PER_GRID_PIXEL = 250
MIN_SIDE = 8


def finite_positive(value, name: str, unit: str = "µm") -> float:
    """``value`` as a float, or a ValueError unless it is a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of {unit} > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number of {unit} > 0, got {value!r}")
    return v


def optional_pixel_size(value, name: str = "pixel_size") -> float | None:
    """A pixel size in µm, or None (unknown: 0 and None both mean "the model's own")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of µm > 0, got {value!r}")
    try:
        if float(value) == 0:
            return None
    except (TypeError, ValueError):
        pass
    return finite_positive(value, name)


def available_memory() -> int | None:
    """Bytes of memory available now (None where it cannot be told)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rescale_factor(factor: float, shape: tuple[int, ...], pixel_size: float | None,
                   model_pixel_size: float | None) -> float:
    """Refuse a rescale factor outside [1/8, 8] (naming both pixel sizes and what to do),
    or one whose model grid would not fit in memory (naming the memory it needs)."""
    if not (1 / MAX_RESCALE <= factor <= MAX_RESCALE):
        raise ValueError(
            f"pixel_size {pixel_size} µm against the model's {model_pixel_size} µm means "
            f"rescaling the image by {factor:.3g}, outside [1/{MAX_RESCALE:g}, {MAX_RESCALE:g}]: "
            "check the pixel size (µm per pixel, e.g. 0.1-2 for light microscopy), or use a "
            "model trained nearer this scale")
    grid = [max(round(s * factor), 1) for s in shape[:2]]
    if min(grid) < MIN_SIDE:
        raise ValueError(f"at pixel_size {pixel_size} µm the image {tuple(shape[:2])} shrinks to "
                         f"{tuple(grid)} px on the model's grid, below {MIN_SIDE} px: check the pixel size")
    need = grid[0] * grid[1] * BYTES_PER_GRID_PIXEL
    free = available_memory()
    if free is not None and need > free:
        raise MemoryError(f"segmenting this image at pixel_size {pixel_size} µm needs about "
                          f"{need / 2**30:.1f} GiB (a {grid[0]} x {grid[1]} model grid), more than "
                          f"the {free / 2**30:.1f} GiB available: check the pixel size, or crop or "
                          "downsample the image")
    return factor


def real_pixels(dtype, name: str = "image") -> None:
    """A ValueError unless ``dtype`` holds real numbers (not bool, complex or text)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b" or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got pixel type {dtype}")


def image_2d(image, name: str = "image", min_side: int = MIN_SIDE) -> np.ndarray:
    """A 2-D numeric image without NaN or infinity, at least ``min_side`` px a side."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        raise ValueError(f"{name}: RGB image of shape {image.shape}: pick the channel with the signal "
                         "first (napari_cellseg.io.select_channel)")
    if image.ndim != 2:
        raise ValueError(f"{name} must be 2-D (M, N), got shape {image.shape}; segment a stack "
                         "plane by plane")
    real_pixels(image.dtype, name)
    if min(image.shape) < min_side:
        raise ValueError(f"{name} of shape {image.shape} is too small (at least {min_side} x {min_side} px)")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise ValueError(f"{name} contains NaN or infinite values; replace them first "
                         "(e.g. numpy.nan_to_num)")
    return image


def label_image(labels, name: str = "labels", binary: str = "error", whole_floats: bool = False,
                one_id_mask: bool = False) -> np.ndarray:
    """A 2-D label image: integers >= 0, one id per object.

    A boolean array is a mask, not a label image: with ``binary="error"`` it is refused
    with a hint; with ``binary="label"`` its connected components become the objects
    (logged). ``whole_floats`` accepts floats that are whole numbers (float label files
    exist). ``one_id_mask`` also treats an image holding one id over several separate
    objects as a mask (a 0/1 or 0/255 mask saved as an image file: true label images
    almost never hold one cell in pieces).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label image, got shape {labels.shape}")
    if labels.dtype == bool:
        return _binary(labels, name, binary, "a boolean mask")
    if np.issubdtype(labels.dtype, np.floating):
        if not whole_floats:
            raise ValueError(f"{name} must hold integers (object ids), got type {labels.dtype}; "
                             "convert whole numbers with .astype(int)")
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(f"{name} must hold whole numbers (object ids), got non-integer values "
                             f"of type {labels.dtype}")
        if labels.size and labels.max() >= 2**53:
            raise ValueError(f"{name} has ids too large for exact integers ({labels.max():.3g})")
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integers (object ids), got type {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} must be >= 0 (0 = background, 1.. = objects), got a minimum "
                         f"of {labels.min()}")
    if labels.size and labels.dtype == np.uint64 and labels.max() >= 2**63:
        raise ValueError(f"{name} has ids too large ({labels.max()}); renumber them first")
    if one_id_mask and labels.size:
        ids = np.unique(labels)
        ids = ids[ids > 0]
        if len(ids) == 1:
            from scipy import ndimage as ndi

            _, n = ndi.label(labels == ids[0])
            if n > 1:
                return _binary(labels > 0, name, binary,
                               f"a binary mask (one value, {ids[0]}, over {n} separate objects)")
    return labels


def _binary(mask: np.ndarray, name: str, binary: str, what: str) -> np.ndarray:
    if binary == "label":
        from scipy import ndimage as ndi

        labels, n = ndi.label(mask)
        logger.info("%s is %s: its %d connected components are taken as the objects", name, what, n)
        return labels
    raise ValueError(f"{name} is {what}, not a label image with one id per object: label its "
                     "connected components first (e.g. skimage.measure.label), or draw the objects "
                     "with separate ids")
