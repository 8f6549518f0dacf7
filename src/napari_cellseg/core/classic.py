"""The classic baseline: smooth -> threshold -> connected components -> size filter,
with an adaptive (local-background) threshold and a distance-transform watershed that
splits touching cells. Every later method is compared with this one."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import disk
from skimage.segmentation import watershed

from . import validate
from .labels import relabel

logger = logging.getLogger(__name__)

SMOOTH_SIGMA = 2.0
THRESHOLD = 0.50
MIN_CELL_SIZE = 30
THRESHOLD_METHODS = ("global", "local", "otsu")
NORMALIZE_MODES = ("auto", "percentile", "none")
# A float image whose 99.8th percentile exceeds this is taken to be in raw units (counts),
# not on the 0-1 scale of the thresholds ("auto" normalisation).
AUTO_NORMALIZE_ABOVE = 10.0


def _as_2d_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    return validate.image_2d(image, name, min_side=1).astype(np.float64, copy=False)


def classic_input(image: np.ndarray, normalize: str = "auto") -> tuple[np.ndarray, bool]:
    """The image the classic thresholds apply to, and whether it was normalised.

    The thresholds are on a 0-1 intensity scale. ``"auto"`` maps the 1st and 99.8th
    percentiles to 0 and 1 (as the UNet path does) for integer images (camera counts:
    8, 12 or 16 bit) and for float images that are clearly not on a 0-1 scale (99.8th
    percentile above :data:`AUTO_NORMALIZE_ABOVE`), and uses other float images as they
    are; ``"percentile"`` always normalises, ``"none"`` never.
    """
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    raw = validate.image_2d(image, min_side=1)
    image = raw.astype(np.float64, copy=False)
    if normalize == "none":
        return image, False
    if normalize == "auto" and np.issubdtype(raw.dtype, np.floating) and \
            np.percentile(image, 99.8) <= AUTO_NORMALIZE_ABOVE:
        return image, False
    from .preprocess import percentile_normalize

    return percentile_normalize(image).astype(np.float64), True


def smooth(image: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """Gaussian smoothing.

    Parameters
    ----------
    image : (M, N) ndarray
    sigma : float
        Standard deviation in pixels; 0 returns a float copy.

    Returns
    -------
    smoothed : (M, N) ndarray of float64
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    image = _as_2d_float(image)
    if sigma == 0:
        return image.copy()
    # 'nearest' keeps a constant image constant up to the border.
    return ndi.gaussian_filter(image, sigma, mode="nearest")


def local_background(image: np.ndarray, radius: float) -> np.ndarray:
    """Slowly varying background: a grey opening with a disc of ``radius`` px, smoothed.

    Objects narrower than the disc vanish from the opening, so ``image - background``
    (a white top-hat) is the signal above the local background.
    """
    r = max(round(radius), 1)
    opened = ndi.grey_opening(image, footprint=disk(r))
    return ndi.uniform_filter(opened, size=r, mode="nearest")


def foreground_mask(
    smoothed: np.ndarray,
    threshold: float = THRESHOLD,
    method: str = "global",
    background_radius: float = 15.0,
) -> np.ndarray:
    """Foreground of a smoothed image.

    ``"global"``: ``smoothed > threshold``. ``"local"``: the threshold applies to the
    signal above the local background (:func:`local_background`), which corrects uneven
    illumination. ``"otsu"``: Otsu's threshold of the smoothed image (``threshold`` is
    ignored).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}")
    if method == "global":
        return smoothed > threshold
    if method == "local":
        return (smoothed - local_background(smoothed, background_radius)) > threshold
    from skimage.filters import threshold_otsu

    if np.ptp(smoothed) == 0:
        return np.zeros(smoothed.shape, dtype=bool)
    return smoothed > threshold_otsu(smoothed)


SPLIT_METHODS = ("intensity", "distance")


def split_touching(
    mask: np.ndarray,
    image: np.ndarray | None = None,
    method: str = "intensity",
    min_distance: int = 5,
    marker_sigma: float = 3.0,
) -> np.ndarray:
    """Split touching objects with a marker-controlled watershed.

    ``"intensity"``: markers are the local maxima of the Laplacian-of-Gaussian response
    of ``image`` at scale ``marker_sigma`` (about half a cell radius), which keeps two
    blob centres apart even when the thresholded mask has no neck between them (two
    Gaussians 14 px apart make a mask without a neck, yet their LoG keeps two peaks).
    ``"distance"``: markers are the local
    maxima of the Euclidean distance to the background, which splits cells joined by a
    neck (shape declumping). Either way the watershed floods the inverted landscape
    the markers came from, inside the mask.

    Parameters
    ----------
    mask : (M, N) ndarray of bool
    image : (M, N) ndarray, optional
        Needed for ``method="intensity"``.
    method : {"intensity", "distance"}
    min_distance : int
        Smallest distance between two markers, in pixels (about a cell radius).
    marker_sigma : float
        LoG scale for ``"intensity"`` markers, in pixels.

    Returns
    -------
    labels : (M, N) ndarray of int32
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"split method must be one of {SPLIT_METHODS}, got {method!r}")
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    components, _ = ndi.label(mask)
    if method == "intensity":
        if image is None:
            raise ValueError("split method 'intensity' needs the image")
        image = _as_2d_float(image)
        if not marker_sigma > 0:  # at 0 scipy returns 2 x the image: the markers would be the rims
            raise ValueError(f"marker_sigma must be > 0 pixels, got {marker_sigma!r}")
        landscape = -ndi.gaussian_laplace(image, marker_sigma)
    else:
        landscape = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(
        landscape, min_distance=max(int(min_distance), 1), labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # An object with no marker (flat or tiny) keeps one at its highest point.
    unmarked = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    for i, pos in enumerate(ndi.maximum_position(landscape, components, unmarked)):
        markers[pos] = len(peaks) + 1 + i
    return watershed(-landscape, markers, mask=mask).astype(np.int32)


def segment_classic(
    image: np.ndarray,
    sigma: float = SMOOTH_SIGMA,
    threshold: float = THRESHOLD,
    min_size: int = MIN_CELL_SIZE,
    method: str = "global",
    split: str | None = None,
    min_distance: int = 5,
    background_radius: float = 15.0,
    normalize: str = "auto",
) -> np.ndarray:
    """The classic pipeline: smooth, threshold, label, drop small objects.

    Parameters
    ----------
    image : (M, N) ndarray
        One channel, any numeric dtype.
    sigma : float
        Gaussian smoothing in pixels.
    threshold : float
        Intensity threshold on the smoothed image (above the local background when
        ``method="local"``).
    min_size : int
        Objects smaller than this many pixels are dropped.
    method : {"global", "local", "otsu"}
        See :func:`foreground_mask`.
    split : {None, "intensity", "distance"}
        Split touching cells with :func:`split_touching` (None: no split).
    min_distance : int
        Smallest distance between two cell centres when splitting, in pixels.
    background_radius : float
        Radius of the local-background disc for ``method="local"``, in pixels; larger
        than a cell.
    normalize : {"auto", "percentile", "none"}
        The thresholds are on a 0-1 scale: ``"auto"`` percentile-normalises integer
        images (camera counts) and float images far off that scale, and uses 0-1 float
        images as they are (see :func:`classic_input`).

    Returns
    -------
    labels : (M, N) ndarray of int32
        0 background, cells 1..K.
    """
    image, _ = classic_input(image, normalize)
    smoothed = smooth(image, sigma)
    mask = foreground_mask(smoothed, threshold, method, background_radius)
    if split:
        # The markers' scale: 1.5 sigma, and 1 px at least (sigma 0, no smoothing, is allowed).
        labels = split_touching(mask, smoothed, split, min_distance, marker_sigma=max(sigma * 1.5, 1.0))
    else:
        labels, _ = ndi.label(mask)
    return relabel(labels, min_size)


def cell_sizes(labels: np.ndarray) -> np.ndarray:
    """Area in pixels of each object 1..max(labels) (0 for missing ids)."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.bincount(labels.ravel())[1:]


def classify_bright_dim(
    image: np.ndarray, labels: np.ndarray, cutoff: float | None = None
) -> tuple[np.ndarray, float]:
    """Classify each object as bright or dim by its mean intensity.

    ``cutoff`` defaults to the exact two-class Otsu split of the per-object means
    (:func:`two_class_cutoff`): two populations need no prior level.

    Returns
    -------
    bright : (K,) ndarray of bool
        One entry per label 1..K.
    cutoff : float
    """
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0, dtype=bool), float("nan") if cutoff is None else cutoff
    means = np.asarray(ndi.mean(np.asarray(image, dtype=float), labels, np.arange(1, n + 1)))
    if cutoff is None:
        cutoff = two_class_cutoff(means)
    return means > cutoff, float(cutoff)


def two_class_cutoff(values: np.ndarray) -> float:
    """Otsu's split of a handful of values, exact: the cut between sorted neighbours that
    maximises the between-class variance. (``skimage.filters.threshold_otsu`` bins the
    values first, which with a few dozen cells can put the cut inside a cluster.)"""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n < 2 or v[-1] == v[0]:
        return float(v[0] - 1.0) if n else float("nan")  # one population: all bright
    i = np.arange(1, n)
    csum = np.cumsum(v)
    mu0 = csum[:-1] / i
    mu1 = (csum[-1] - csum[:-1]) / (n - i)
    between = (i / n) * (1 - i / n) * (mu0 - mu1) ** 2
    k = int(np.argmax(between))
    return float((v[k] + v[k + 1]) / 2.0)
