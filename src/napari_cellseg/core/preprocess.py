"""Preprocessing: normalisation, top-hat background removal, rescaling to a reference
pixel size and back."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

REFERENCE_PIXEL_SIZE = 0.65  # µm, the paper's reference (10x)
TOPHAT_SIZE_UM = 130.0  # the paper's 200 px at 0.65 µm/px


def percentile_range(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                     eps: float = 1e-6) -> tuple | None:
    """The (lo, hi) that :func:`percentile_normalize` maps to 0 and 1, as the numbers its
    arithmetic uses: the ``low`` and ``high`` percentiles (numpy float64), or the minimum
    and maximum (Python floats) when those are closer than ``eps`` of their magnitude;
    None for a constant image. Relative, so that an image in physical units whose values
    all lie below 1e-6 is not taken for a constant one. Block-wise segmentation computes
    it once for a whole slide."""

    def flat(lo, hi) -> bool:
        return not hi - lo > eps * max(abs(float(lo)), abs(float(hi)))

    lo, hi = np.percentile(image, [low, high])
    if flat(lo, hi):
        hi = float(np.max(image))
        lo = float(np.min(image))
        if flat(lo, hi):
            return None
    return lo, hi


def apply_range(image: np.ndarray, value_range: tuple | None) -> np.ndarray:
    """``(image - lo) / (hi - lo)`` in float32 for ``value_range = (lo, hi)`` from
    :func:`percentile_range`; zeros for None."""
    image = np.asarray(image, dtype=np.float32)
    if value_range is None:
        return np.zeros(image.shape, dtype=np.float32)
    lo, hi = value_range
    return ((image - lo) / (hi - lo)).astype(np.float32)


def percentile_normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-6
) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles to 0 and 1 (values outside are kept).

    A constant image maps to zeros. NaN is refused (clear error, not silent garbage).

    Returns
    -------
    normalized : (M, N) ndarray of float32
    """
    image = np.asarray(image, dtype=np.float32)
    if image.size == 0:
        raise ValueError("empty image")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values; replace them first "
                         "(e.g. numpy.nan_to_num)")
    return apply_range(image, percentile_range(image, low, high, eps))


def tophat(image: np.ndarray, size_px: float) -> np.ndarray:
    """White top-hat: image minus its grey opening with a ``size_px`` square.

    A square opening is separable (van Herk / Gil-Werman running min/max in scipy), so
    its cost does not grow with the size: a 200 x 200 px top-hat of a 1 Mpx frame takes
    tens of ms where a disc of that size takes seconds. For removing a background that
    varies over hundreds of pixels the square and the disc are equivalent.
    """
    image = np.asarray(image, dtype=np.float32)
    size = max(round(size_px), 1)
    if size <= 1:
        return image.copy()
    background = ndi.grey_opening(image, size=(size, size), mode="reflect")
    return image - background


def scale_factor(pixel_size: float | None, target_pixel_size: float | None) -> float:
    """Zoom that brings an image of ``pixel_size`` µm to ``target_pixel_size`` µm (1 when
    either is unknown)."""
    if not pixel_size or not target_pixel_size:
        return 1.0
    if pixel_size <= 0 or target_pixel_size <= 0:
        raise ValueError(f"pixel sizes must be > 0, got {pixel_size} and {target_pixel_size}")
    return float(pixel_size) / float(target_pixel_size)


def rescale(image: np.ndarray, factor: float, order: int = 1) -> np.ndarray:
    """Zoom a 2-D image by ``factor`` (anti-aliased when shrinking)."""
    if abs(factor - 1.0) < 1e-6:
        return np.asarray(image)
    shape = tuple(max(round(s * factor), 1) for s in image.shape[:2])
    return resize(
        image, shape + image.shape[2:], order=order, preserve_range=True,
        anti_aliasing=factor < 1 and order > 0, mode="reflect",
    ).astype(image.dtype if order == 0 else np.float32)


def restore_shape(array: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Bring a map computed on a rescaled grid back to ``shape`` (order 0 for labels)."""
    if array.shape[:2] == tuple(shape):
        return array
    return resize(
        array, tuple(shape) + array.shape[2:], order=order, preserve_range=True,
        anti_aliasing=False, mode="edge",
    ).astype(array.dtype)
