"""Seeds (Al-Kofahi et al. 2018, step 2): one marker per cell from the seed probability.

1. Multi-scale Laplacian-of-Gaussian enhancement of the seed (nucleus) probability over
   the expected seed sizes (scale-normalised, maximum over scales).
2. Multi-level Otsu on the enhanced map (5 thresholds); ``sensitivity`` (0-100) picks
   which one separates seeds from background: sensitivity 60 -> the third of five, as in
   the paper; higher sensitivity -> lower threshold -> more seed pixels.
3. The seed mask is split into single seeds by a shape watershed: the distance to the
   mask's edge, extended h-maxima with ``h`` in µm, watershed of the inverted distance.

Step 3 is done as a cut of a watershed hierarchy by dynamics (higra), built once per
seed mask: extended h-maxima + watershed at ``h`` equals the horizontal cut of that
hierarchy at altitude ``h``, so moving the h slider costs a few milliseconds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

N_THRESHOLDS = 5
DEFAULT_SENSITIVITY = 60.0
DEFAULT_H_UM = 3.0


def log_enhance(probability: np.ndarray, sigmas: tuple[float, ...]) -> np.ndarray:
    """Maximum over scales of the scale-normalised negative LoG, clipped at 0.

    Parameters
    ----------
    probability : (M, N) ndarray
        Seed probability (0-1).
    sigmas : tuple of float
        LoG scales in pixels; a disc of radius r responds best at sigma = r / sqrt(2).

    Returns
    -------
    response : (M, N) ndarray of float32, >= 0
    """
    p = np.asarray(probability, dtype=np.float32)
    if p.ndim != 2:
        raise ValueError(f"probability must be 2-D, got shape {p.shape}")
    if not sigmas:
        raise ValueError("at least one LoG scale is needed")
    out = np.zeros(p.shape, dtype=np.float32)
    for s in sigmas:
        if s <= 0:
            raise ValueError(f"LoG scales must be > 0, got {s}")
        np.maximum(out, -(s**2) * ndi.gaussian_laplace(p, s), out=out)
    return out


def seed_scales(seed_diameter_px: tuple[float, float], n: int = 3) -> tuple[float, ...]:
    """LoG scales (px) covering seed diameters from ``seed_diameter_px[0]`` to ``[1]``."""
    lo, hi = sorted(float(d) for d in seed_diameter_px)
    lo = max(lo, 1.0)
    hi = max(hi, lo)
    radii = np.geomspace(lo / 2.0, hi / 2.0, n) if n > 1 and hi > lo else np.array([lo / 2.0])
    return tuple(float(r / np.sqrt(2.0)) for r in radii)


def otsu_levels(response: np.ndarray, n_thresholds: int = N_THRESHOLDS, nbins: int = 64) -> np.ndarray:
    """``n_thresholds`` multi-level Otsu thresholds of the positive part of ``response``.

    Zero (no blob at all) is most of an image and would swamp the histogram, so only
    pixels with a response above 1 % of the maximum enter. Fewer distinct values than
    classes (a blank image) give thresholds spread over the range instead of an error.
    """
    from skimage.filters import threshold_multiotsu

    r = np.asarray(response)
    top = float(r.max()) if r.size else 0.0
    if top <= 0:
        return np.full(n_thresholds, np.inf)
    values = r[r > 0.01 * top]
    try:
        t = threshold_multiotsu(values, classes=n_thresholds + 1, nbins=nbins)
    except ValueError:  # too few distinct values
        t = np.linspace(0.01 * top, top, n_thresholds + 2)[1:-1]
    return np.sort(np.asarray(t, dtype=np.float64))


def sensitivity_level(sensitivity: float, n_thresholds: int = N_THRESHOLDS) -> int:
    """Index of the Otsu threshold for a sensitivity in [0, 100].

    ``floor((100 - s) / (100 / n))`` clipped to the valid range: with five thresholds,
    60 -> 2 (the third), 100 -> 0 (the lowest: most seeds), 0-20 -> 4 (the highest).
    """
    if not 0 <= sensitivity <= 100:
        raise ValueError(f"sensitivity must be in [0, 100], got {sensitivity}")
    step = 100.0 / n_thresholds
    return int(np.clip(np.floor((100.0 - sensitivity) / step + 1e-9), 0, n_thresholds - 1))


class SeedSplitter:
    """Shape watershed of one seed mask, cut at any h in a few milliseconds.

    The hierarchy is built on the graph of seed pixels only (4-adjacency), edge weight
    = the larger inverted distance of its two ends; separate components are joined by
    a virtual vertex through edges above every h, so they never merge.
    """

    def __init__(self, mask: np.ndarray):
        import higra as hg

        mask = np.asarray(mask, dtype=bool)
        self.shape = mask.shape
        self.index = np.flatnonzero(mask)
        n = len(self.index)
        self.n_components = 0
        self.tree = None
        if n == 0:
            return
        dist = ndi.distance_transform_edt(mask).astype(np.float32)
        components, n_comp = ndi.label(mask)
        self.n_components = n_comp
        vid = np.full(mask.size, -1, dtype=np.int64)
        vid[self.index] = np.arange(n)
        vid = vid.reshape(mask.shape)
        alt = -dist.ravel()[self.index]
        src, dst = [], []
        for a, b in ((vid[:, :-1], vid[:, 1:]), (vid[:-1, :], vid[1:, :])):
            ok = (a >= 0) & (b >= 0)
            src.append(a[ok])
            dst.append(b[ok])
        src = np.concatenate(src)
        dst = np.concatenate(dst)
        weights = np.maximum(alt[src], alt[dst])
        # One representative per component (its first pixel), tied to a virtual vertex n.
        _, reps = np.unique(components.ravel()[self.index], return_index=True)
        big = float(dist.max()) * 4 + 1e6
        src = np.concatenate([src, reps])
        dst = np.concatenate([dst, np.full(len(reps), n)])
        weights = np.concatenate([weights, np.full(len(reps), big)]).astype(np.float64)
        graph = hg.UndirectedGraph(n + 1)
        graph.add_edges(src, dst)
        self.tree, self.altitudes = hg.watershed_hierarchy_by_dynamics(graph, weights)

    def cut(self, h_px: float) -> np.ndarray:
        """Seed labels (M, N) int32, consecutive 1..K, for an h in pixels (>= 0)."""
        import higra as hg

        if h_px < 0:
            raise ValueError(f"h must be >= 0, got {h_px}")
        out = np.zeros(self.shape, dtype=np.int32)
        if self.tree is None:
            return out
        # Basins whose dynamics are <= h merge: the maxima that survive are those whose
        # dynamic exceeds h, as with extended h-maxima.
        labels = hg.labelisation_horizontal_cut_from_threshold(self.tree, self.altitudes, float(h_px))
        labels = np.asarray(labels)[:-1]  # drop the virtual vertex
        # Consecutive ids 1..K in O(n) (np.unique would sort).
        present = np.bincount(labels) > 0
        lut = np.cumsum(present, dtype=np.int32)
        out.ravel()[self.index] = lut[labels]
        return out


def seed_mask(response: np.ndarray, thresholds: np.ndarray, sensitivity: float) -> np.ndarray:
    """Pixels whose LoG response exceeds the threshold picked by ``sensitivity``."""
    return np.asarray(response) > thresholds[sensitivity_level(sensitivity, len(thresholds))]


def detect_seeds(
    seed_probability: np.ndarray,
    pixel_size: float,
    seed_diameter_um: tuple[float, float] = (2.0, 5.0),
    sensitivity: float = DEFAULT_SENSITIVITY,
    h_um: float = DEFAULT_H_UM,
    min_seed_px: int = 2,
) -> np.ndarray:
    """All of step 2 at once (no caching): seed labels (M, N) int32.

    Parameters
    ----------
    seed_probability : (M, N) ndarray
    pixel_size : float
        µm per pixel.
    seed_diameter_um : (float, float)
        Smallest and largest seed diameter in µm (the LoG scales).
    sensitivity : float
        0-100; see :func:`sensitivity_level`.
    h_um : float
        h of the extended h-maxima in µm.
    min_seed_px : int
        Seeds smaller than this many pixels are dropped.
    """
    if pixel_size <= 0:
        raise ValueError(f"pixel_size must be > 0 µm, got {pixel_size}")
    response = log_enhance(seed_probability, seed_scales(tuple(d / pixel_size for d in seed_diameter_um)))
    mask = seed_mask(response, otsu_levels(response), sensitivity)
    labels = SeedSplitter(mask).cut(h_um / pixel_size)
    from .classic import relabel_sequential_by_size

    return relabel_sequential_by_size(labels, min_seed_px)
