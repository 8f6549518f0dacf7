"""Synthetic fluorescence images with exact ground truth.

Two families:

* the *lesson* images: isotropic 2-D Gaussian blobs on clipped Gaussian noise
  (:func:`make_image`, :func:`make_pure_noise`) and their extensions (dim cells, an
  illumination gradient, a pair of cells at a chosen separation);
* *whole-cell* images in the style of cytoplasm- or membrane-stained tissue
  (:func:`make_whole_cell_image`): irregular, touching cells with a dim nucleus, on an
  uneven background, with instance and nucleus labels;
* *tissue* images in the look of the dense T-cell set (:func:`make_tissue_image`):
  clustered cells with patchy bright rims, a wide brightness spread, unstained
  (unlabelled) neighbours, blur and Poisson-Gaussian noise; for pretraining.

numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

SEED = 7493418
IMAGE_SIZE = 128
N_CELLS = 8
CELL_SIGMA = 6
CELL_BRIGHTNESS = 1.0
NOISE_SCALE = 0.15
MIN_SEPARATION = 24
DIM_BRIGHTNESS = 0.4
GRADIENT_AMPLITUDE = 0.2

# Ground truth of a Gaussian blob: the disc where the noise-free blob is above half its
# peak, radius sigma * sqrt(2 ln 2) (FWHM / 2), split between touching blobs by the
# nearest centre.
_HALF_MAX_RADIUS = float(np.sqrt(2.0 * np.log(2.0)))


def _place_centers(
    rng: np.random.Generator,
    n: int,
    size: int,
    min_separation: float,
    margin: float,
    max_tries: int = 100_000,
) -> np.ndarray:
    """Rejection-sample ``n`` centres with no two closer than ``min_separation``."""
    centers: list[np.ndarray] = []
    tries = 0
    while len(centers) < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(
                f"could not place {n} cells at least {min_separation} px apart in a "
                f"{size} x {size} image; lower n_cells or min_separation"
            )
        c = rng.uniform(margin, size - margin, size=2)
        if all(np.hypot(*(c - p)) >= min_separation for p in centers):
            centers.append(c)
    return np.array(centers, dtype=float).reshape(-1, 2)


def gaussian_blobs(
    centers: np.ndarray,
    shape: tuple[int, int],
    sigma: float = CELL_SIGMA,
    brightness: float | np.ndarray = CELL_BRIGHTNESS,
) -> np.ndarray:
    """Sum of 2-D Gaussians ``B exp(-((x-xc)^2 + (y-yc)^2) / (2 sigma^2))``.

    Parameters
    ----------
    centers : (K, 2) ndarray
        ``(row, col)`` of each blob.
    shape : tuple of int
        Output shape ``(M, N)``.
    sigma : float
        Standard deviation of each blob in pixels.
    brightness : float or (K,) ndarray
        Peak value ``B`` of each blob.

    Returns
    -------
    image : (M, N) ndarray of float64
    """
    centers = np.asarray(centers, dtype=float).reshape(-1, 2)
    b = np.broadcast_to(np.asarray(brightness, dtype=float), (len(centers),))
    yy, xx = np.indices(shape, dtype=float)
    image = np.zeros(shape, dtype=float)
    for (yc, xc), bi in zip(centers, b, strict=True):
        image += bi * np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / (2.0 * sigma**2))
    return image


def blob_labels(
    centers: np.ndarray, shape: tuple[int, int], sigma: float = CELL_SIGMA
) -> np.ndarray:
    """Exact instance labels of Gaussian blobs.

    Cell ``k`` (label ``k + 1``) is the set of pixels within the half-maximum radius
    ``sigma * sqrt(2 ln 2)`` of centre ``k`` that are closer to it than to any other
    centre.
    """
    centers = np.asarray(centers, dtype=float).reshape(-1, 2)
    labels = np.zeros(shape, dtype=np.int32)
    if len(centers) == 0:
        return labels
    yy, xx = np.indices(shape, dtype=float)
    d2 = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    nearest = np.argmin(d2, axis=0)
    inside = np.min(d2, axis=0) <= (_HALF_MAX_RADIUS * sigma) ** 2
    labels[inside] = nearest[inside] + 1
    return labels


def make_image(
    seed: int = SEED,
    size: int = IMAGE_SIZE,
    n_cells: int = N_CELLS,
    sigma: float = CELL_SIGMA,
    brightness: float = CELL_BRIGHTNESS,
    noise_scale: float = NOISE_SCALE,
    min_separation: float = MIN_SEPARATION,
) -> tuple[np.ndarray, np.ndarray]:
    """The lesson image: ``n_cells`` Gaussian cells on clipped Gaussian noise.

    Centres are uniform in the image, at least ``2 * sigma`` from its edge, with no two
    closer than ``min_separation``.

    Returns
    -------
    image : (size, size) ndarray of float64, >= 0
    centers : (n_cells, 2) ndarray of ``(row, col)``
    """
    rng = np.random.default_rng(seed)
    centers = _place_centers(rng, n_cells, size, min_separation, margin=2.0 * sigma)
    image = gaussian_blobs(centers, (size, size), sigma, brightness)
    image += rng.normal(0.0, noise_scale, size=image.shape)
    np.clip(image, 0.0, None, out=image)
    return image, centers


def make_pure_noise(
    seed: int = SEED, size: int = IMAGE_SIZE, noise_scale: float = NOISE_SCALE
) -> np.ndarray:
    """Clipped Gaussian noise with no cell: every detection in it is false."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, noise_scale, size=(size, size)), 0.0, None)


@dataclass
class SyntheticScene:
    """A synthetic image with its exact truth."""

    image: np.ndarray
    labels: np.ndarray
    centers: np.ndarray
    nucleus_labels: np.ndarray | None = None
    bright: np.ndarray | None = None  # (K,) bool, one per label 1..K


def make_bright_dim_image(
    seed: int = SEED,
    size: int = IMAGE_SIZE,
    n_bright: int = N_CELLS // 2,
    n_dim: int = N_CELLS // 2,
    dim_brightness: float = DIM_BRIGHTNESS,
    noise_scale: float = NOISE_SCALE,
    gradient: float = 0.0,
) -> SyntheticScene:
    """Bright (B = 1.0) and dim (B = ``dim_brightness``) cells, optionally on the
    illumination gradient ``G(x, y) = gradient * x / size`` added before the noise."""
    rng = np.random.default_rng(seed)
    n = n_bright + n_dim
    centers = _place_centers(rng, n, size, MIN_SEPARATION, margin=2.0 * CELL_SIGMA)
    bright = np.zeros(n, dtype=bool)
    bright[rng.permutation(n)[:n_bright]] = True
    b = np.where(bright, CELL_BRIGHTNESS, dim_brightness)
    image = gaussian_blobs(centers, (size, size), CELL_SIGMA, b)
    if gradient:
        image += illumination_gradient((size, size), gradient)
    image += rng.normal(0.0, noise_scale, size=image.shape)
    np.clip(image, 0.0, None, out=image)
    return SyntheticScene(image, blob_labels(centers, (size, size)), centers, bright=bright)


def illumination_gradient(
    shape: tuple[int, int], amplitude: float = GRADIENT_AMPLITUDE
) -> np.ndarray:
    """``G(x, y) = amplitude * x / width``: a left-to-right ramp of uneven illumination."""
    width = shape[1]
    return np.broadcast_to(amplitude * np.arange(width, dtype=float) / width, shape).copy()


def make_gradient_image(
    seed: int = SEED, size: int = IMAGE_SIZE, amplitude: float = GRADIENT_AMPLITUDE
) -> SyntheticScene:
    """The lesson image with the illumination gradient added before the noise."""
    rng = np.random.default_rng(seed)
    centers = _place_centers(rng, N_CELLS, size, MIN_SEPARATION, margin=2.0 * CELL_SIGMA)
    image = gaussian_blobs(centers, (size, size)) + illumination_gradient((size, size), amplitude)
    image += rng.normal(0.0, NOISE_SCALE, size=image.shape)
    np.clip(image, 0.0, None, out=image)
    return SyntheticScene(image, blob_labels(centers, (size, size)), centers)


def make_pair_image(
    separation: float = 14.0,
    seed: int = SEED,
    size: int = 64,
    noise_scale: float = NOISE_SCALE,
) -> SyntheticScene:
    """Two cells ``separation`` px apart, side by side about the image centre."""
    rng = np.random.default_rng(seed)
    c = size / 2.0
    centers = np.array([[c, c - separation / 2.0], [c, c + separation / 2.0]])
    image = gaussian_blobs(centers, (size, size))
    image += rng.normal(0.0, noise_scale, size=image.shape)
    np.clip(image, 0.0, None, out=image)
    return SyntheticScene(image, blob_labels(centers, (size, size)), centers)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-sd random field correlated over ``scale`` pixels."""
    f = ndi.gaussian_filter(rng.normal(size=shape), scale, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def make_whole_cell_image(
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    cell_radius: float = 9.0,
    density: float = 0.75,
    stain: str = "cytoplasm",
    noise_scale: float = 0.04,
    background: float = 0.15,
) -> SyntheticScene:
    """Irregular touching cells with a dim nucleus on an uneven background.

    Cells grow from Poisson-disc centres: each pixel goes to the nearest centre by a
    distance warped with a smooth random field (irregular, touching outlines), within
    a per-cell radius. The nucleus is an ellipse around the centre, about half the cell
    radius, that never crosses the cell outline.

    Parameters
    ----------
    seed : int
        Random seed; the same seed gives the same image.
    shape : tuple of int
        ``(M, N)``.
    cell_radius : float
        Typical cell radius in pixels.
    density : float
        Fraction (0-1) of the densest packing of centres that is filled.
    stain : {"cytoplasm", "membrane"}
        ``"cytoplasm"``: bright cytoplasm, dim nucleus (cultured-cell style).
        ``"membrane"``: a bright rim on a dim interior (surface-marker style, like the
        dense T-cell set), brighter where two cells touch.
    noise_scale : float
        Standard deviation of the additive Gaussian noise (the peak signal is about 1).
    background : float
        Mean level of the uneven background.

    Returns
    -------
    SyntheticScene
        ``image`` float32 in about [0, 1.5]; ``labels`` and ``nucleus_labels`` int32
        with equal ids for a cell and its nucleus.
    """
    if stain not in ("cytoplasm", "membrane"):
        raise ValueError(f"stain must be 'cytoplasm' or 'membrane', got {stain!r}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    rng = np.random.default_rng(seed)
    centers = _dart_centers(rng, shape, 1.6 * cell_radius, density)
    k = len(centers)
    labels = np.zeros(shape, dtype=np.int32)
    nuclei = np.zeros(shape, dtype=np.int32)
    if k:
        yy, xx = np.indices(shape, dtype=float)
        radii = cell_radius * rng.uniform(0.8, 1.25, size=k)
        warp = 0.18 * _smooth_field(rng, shape, cell_radius / 2.0)
        # Distance in units of each cell's radius, warped: irregular outlines.
        best = np.full(shape, np.inf)
        nbest = np.full(shape, np.inf)
        for i, (cy, cx) in enumerate(centers):
            d = np.hypot(yy - cy, xx - cx) / radii[i]
            better = d < best
            labels[better] = i + 1
            best[better] = d[better]
            # Nucleus: an ellipse of semi-axes ~0.5 r at a random angle.
            a, b = radii[i] * rng.uniform(0.4, 0.55, size=2)
            t = rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
            v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
            dn = np.hypot(u / a, v / b)
            nb = dn < nbest
            nbest[nb] = dn[nb]
            nuclei[nb & (dn <= 1.0)] = i + 1
        labels[(best + warp) > 1.0] = 0
        # A nucleus stays inside its own cell, clear of the outline.
        inner = ndi.binary_erosion(labels > 0, iterations=2)
        nuclei[(nuclei != labels) | ~inner] = 0
        # Keep ids consecutive and the same for a cell and its nucleus; drop fragments.
        labels, nuclei = _tidy_labels(labels, nuclei, min_area=int(0.5 * np.pi * cell_radius**2 * 0.3))
        centers = np.array(ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1)))
        centers = centers.reshape(-1, 2)

    image = _render_whole_cell(rng, labels, nuclei, stain, cell_radius, noise_scale, background)
    return SyntheticScene(image, labels, centers, nucleus_labels=nuclei)


def _dart_centers(rng: np.random.Generator, shape: tuple[int, int], spacing: float,
                  density: float) -> np.ndarray:
    """Poisson-disc-like cell centres (K, 2): dart throwing, no two closer than ``spacing``,
    up to ``density`` of the densest (hexagonal) packing."""
    h, w = shape
    n_target = int(density * h * w / (0.866 * spacing**2))
    pts: list[np.ndarray] = []
    for _ in range(n_target * 30):
        if len(pts) >= n_target:
            break
        p = rng.uniform(0, [h, w])
        if not pts or np.min(np.hypot(*(np.array(pts) - p).T)) >= spacing:
            pts.append(p)
    return np.array(pts, dtype=float).reshape(-1, 2)


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (background included), both sides."""
    outline = np.zeros(labels.shape, dtype=bool)
    outline[:-1] |= labels[:-1] != labels[1:]
    outline[1:] |= labels[:-1] != labels[1:]
    outline[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    outline[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    return outline


def _tidy_labels(
    labels: np.ndarray, nuclei: np.ndarray, min_area: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the largest connected piece of each cell, drop cells below ``min_area`` or
    without a nucleus, and renumber 1..K keeping cell and nucleus ids equal."""
    from skimage.measure import label as cc_label  # scikit-image is a core dependency

    pieces = cc_label(labels > 0, connectivity=1)
    # Split cells whose pixels fall in several 4-connected pieces: keep the largest.
    pair = labels.astype(np.int64) * (pieces.max() + 1) + pieces
    ids, counts = np.unique(pair[labels > 0], return_counts=True)
    owner = ids // (pieces.max() + 1)
    keep_pair = np.zeros(len(ids), dtype=bool)
    order = np.lexsort((-counts, owner))
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    keep_pair[order[first]] = True
    kept = np.isin(pair, ids[keep_pair]) & (labels > 0)
    labels = np.where(kept, labels, 0)
    area = np.bincount(labels.ravel(), minlength=labels.max() + 1)
    has_nucleus = np.bincount(nuclei.ravel(), minlength=labels.max() + 1) > 0
    valid = (area >= min_area) & has_nucleus[: len(area)]
    valid[0] = False
    lut = np.zeros(len(area), dtype=np.int32)
    lut[valid] = np.arange(1, valid.sum() + 1, dtype=np.int32)
    nuc_lut = lut[np.minimum(nuclei, len(lut) - 1)]
    return lut[labels], np.where((nuclei > 0) & (lut[labels] == nuc_lut), nuc_lut, 0)


def _render_whole_cell(
    rng: np.random.Generator,
    labels: np.ndarray,
    nuclei: np.ndarray,
    stain: str,
    cell_radius: float,
    noise_scale: float,
    background: float,
) -> np.ndarray:
    shape = labels.shape
    k = int(labels.max())
    gain = np.concatenate([[0.0], rng.uniform(0.45, 1.0, size=k)])
    cell = labels > 0
    texture = 1.0 + 0.15 * _smooth_field(rng, shape, 1.5)
    if stain == "cytoplasm":
        signal = gain[labels] * texture * cell
        signal[nuclei > 0] *= 0.3
    else:
        # Bright rim from the distance to the cell's own outline; shared borders glow.
        d = ndi.distance_transform_edt(~_outlines(labels))
        rim = np.exp(-(d**2) / (2 * 1.2**2))
        signal = gain[labels] * texture * cell * (0.25 + 0.9 * rim)
    illum = background * (1.0 + 0.6 * _smooth_field(rng, shape, max(shape) / 4.0))
    image = ndi.gaussian_filter(signal, 1.0) + np.clip(illum, 0.0, None)
    image += rng.normal(0.0, noise_scale, size=shape)
    return np.clip(image, 0.0, None).astype(np.float32)


def _ellipse_partition(rng: np.random.Generator, shape: tuple[int, int], centers: np.ndarray,
                       radius: float, major: tuple[float, float], min_ratio: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel to the centre whose ellipse (major semi-axis ``major`` x ``radius``, minor
    ``min_ratio``-1 of it, a random angle; drawn in that order per centre) it lies deepest
    in: (labels 1..K, that ellipse's normalised distance, 1 on its outline)."""
    labels = np.zeros(shape, dtype=np.int32)
    yy, xx = np.indices(shape, dtype=float)
    best = np.full(shape, np.inf)
    for i, (cy, cx) in enumerate(centers):
        a = radius * rng.uniform(*major)
        b = a * rng.uniform(min_ratio, 1.0)
        t = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
        v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        d = np.hypot(u / a, v / b)
        better = d < best
        labels[better] = i + 1
        best[better] = d[better]
    return labels, best


def make_tissue_image(
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    cell_radius: float = 7.5,
    density: float = 0.9,
    stained_fraction: float = 0.6,
    brightness_spread: float = 0.6,
    photons: float = 60.0,
    read_noise: float = 0.02,
    blur: float = 1.0,
) -> SyntheticScene:
    """Packed tissue stained for a surface marker, in the look of the dense T-cell set:
    bright, patchy rims on dim interiors, irregular cells in clusters, a wide spread of
    brightness (many faint cells), unstained neighbours, blur and shot noise.

    Cells are laid out as in :func:`make_whole_cell_image` (dart throwing, a warped
    nearest-centre partition), with elliptical outlines and centres thinned by a smooth
    random field, so that cells gather in clusters with empty tissue between. Only a
    ``stained_fraction`` of the cells carry the marker: the others are rendered as a
    faint haze and are *not* in the labels, as in the annotated data, where unstained
    cells between stained ones are not outlined.

    Parameters
    ----------
    seed : int
        Random seed; the same seed gives the same image.
    shape : tuple of int
        ``(M, N)``.
    cell_radius : float
        Typical cell radius in pixels (the dense set's cells: about 7.5 px).
    density : float
        Fraction (0-1] of the densest packing filled where the tissue is dense.
    stained_fraction : float
        Share (0-1] of the cells that carry the marker and are labelled.
    brightness_spread : float
        Standard deviation of the log of the stained cells' brightness (0: all equal).
    photons : float
        Expected photons at the brightest rims: the Poisson noise (lower is noisier).
    read_noise : float
        Standard deviation of the added Gaussian camera noise (peak signal about 1).
    blur : float
        Gaussian point-spread function sigma in pixels.

    Returns
    -------
    SyntheticScene
        ``image`` float32 (peak about 1); ``labels`` int32 of the stained cells, 1..K;
        ``centers`` their centroids; no nucleus labels (the seeds are the cells'
        interiors, as for the dense set).
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not 0 < stained_fraction <= 1:
        raise ValueError(f"stained_fraction must be in (0, 1], got {stained_fraction}")
    if not (photons > 0 and read_noise >= 0 and blur >= 0 and brightness_spread >= 0 and cell_radius > 1):
        raise ValueError("photons and cell_radius must be positive, read_noise, blur and "
                         "brightness_spread not negative")
    rng = np.random.default_rng(seed)
    h, w = shape
    # Clusters: a centre is kept with a probability that follows a smooth field.
    keep_field = ndi.gaussian_filter(rng.normal(size=shape), 4 * cell_radius, mode="wrap")
    keep_field = 1.0 / (1.0 + np.exp(-4.0 * keep_field / (keep_field.std() + 1e-12)))
    centers = _dart_centers(rng, shape, 1.55 * cell_radius, density)
    iy, ix = np.clip(centers.astype(int), 0, [h - 1, w - 1]).T if len(centers) else ([], [])
    centers = centers[rng.random(len(centers)) < keep_field[iy, ix]] if len(centers) else centers
    # Ellipses (major semi-axis 0.85-1.25 r, ratio down to 0.7) at random angles.
    labels, best = _ellipse_partition(rng, shape, centers, cell_radius, (0.85, 1.25), 0.7)
    k = len(centers)
    if k:
        warp = 0.25 * _smooth_field(rng, shape, cell_radius / 2.0)
        labels[(best + warp) > 1.0] = 0
        labels, _ = _tidy_labels(labels, labels, min_area=int(0.3 * np.pi * cell_radius**2 * 0.5))
    k = int(labels.max())
    stained = np.concatenate([[False], rng.random(k) < stained_fraction])
    gain = np.exp(rng.normal(0.0, brightness_spread, size=k + 1))
    gain = np.where(stained, gain / np.exp(brightness_spread**2 / 2), rng.uniform(0.03, 0.1, size=k + 1))
    gain[0] = 0.0
    # Rims: distance to the cell's own outline; patchy along the membrane.
    d = ndi.distance_transform_edt(~_outlines(labels))
    rim = np.exp(-(d**2) / (2 * rng.uniform(0.9, 1.4) ** 2))
    patchy = np.clip(1.0 + 0.6 * _smooth_field(rng, shape, 1.5), 0.1, None)
    interior = rng.uniform(0.1, 0.45) * np.clip(1.0 + 0.4 * _smooth_field(rng, shape, 1.0), 0.0, None)
    signal = gain[labels] * (labels > 0) * (interior + rim * patchy)
    tissue = 0.02 * (1.0 + 0.5 * _smooth_field(rng, shape, max(shape) / 6.0))  # autofluorescence
    signal = ndi.gaussian_filter(signal, blur) if blur > 0 else signal
    signal = signal / max(float(np.percentile(signal, 99.9)), 1e-6) + np.clip(tissue, 0, None)
    image = rng.poisson(signal * photons) / photons + rng.normal(0.0, read_noise, size=shape)
    # Keep only the stained cells as truth, numbered 1..K.
    lut = np.zeros(k + 1, dtype=np.int32)
    lut[stained] = np.arange(1, int(stained.sum()) + 1, dtype=np.int32)
    labels = lut[labels]
    centers = np.array(ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1))).reshape(-1, 2)
    return SyntheticScene(np.clip(image, 0.0, None).astype(np.float32), labels, centers)


def make_nuclei_image(
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    nucleus_radius: float = 7.5,
    density: float = 0.5,
    brightness_spread: float = 0.4,
    blur: float = 1.0,
    glow: float = 0.2,
    glow_sigma: float = 3.0,
    photons: float = 100.0,
    read_noise: float = 0.01,
    background: float = 0.05,
) -> SyntheticScene:
    """Nuclei in a DNA stain (DAPI, Hoechst), as a widefield microscope records them:
    filled, textured ellipses of varied brightness, some touching, blurred by the
    point-spread function and surrounded by an out-of-focus glow, with shot noise.

    The truth is each nucleus's own extent (the ellipse before any blur): where an
    annotator draws the steep edge, not the glow around it. Widefield nuclei carry such a
    glow (on a public nuclear image of the 2018 Data Science Bowl, 0.35 / 0.27 / 0.20 of
    the nucleus's brightness 1 / 2 / 3 px outside the expert's outline), and a network
    that never saw one draws the nuclei as wide as their glow.

    Parameters
    ----------
    seed : int
        Random seed; the same seed gives the same image.
    shape : tuple of int
        ``(M, N)``.
    nucleus_radius : float
        Typical nucleus radius in pixels (semi-axes 0.8-1.25 of it, aspect down to 0.65).
    density : float
        Fraction (0-1] of the densest packing of centres that is filled.
    brightness_spread : float
        Standard deviation of the log of the nuclei's brightness (0: all equal).
    blur : float
        Gaussian point-spread function sigma in pixels.
    glow : float
        Share (0-1) of each nucleus's light spread into the out-of-focus glow.
    glow_sigma : float
        The glow's Gaussian sigma in pixels.
    photons : float
        Expected photons at a nucleus of mean brightness: the Poisson noise.
    read_noise : float
        Standard deviation of the added Gaussian camera noise (peak signal about 1).
    background : float
        Mean level of the uneven background.

    Returns
    -------
    SyntheticScene
        ``image`` float32; ``labels`` int32 nuclei 1..K (the seeds are their interiors).
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not 0 <= glow < 1:
        raise ValueError(f"glow must be in [0, 1), got {glow}")
    if not (nucleus_radius > 1 and photons > 0 and read_noise >= 0 and blur >= 0 and glow_sigma > 0
            and brightness_spread >= 0 and background >= 0):
        raise ValueError("nucleus_radius, photons and glow_sigma must be positive; read_noise, blur, "
                         "brightness_spread and background not negative")
    rng = np.random.default_rng(seed)
    centers = _dart_centers(rng, shape, 1.7 * nucleus_radius, density)
    labels, best = _ellipse_partition(rng, shape, centers, nucleus_radius, (0.8, 1.25), 0.65)
    if len(centers):
        warp = 0.12 * _smooth_field(rng, shape, nucleus_radius / 2.0)
        labels[(best + warp) > 1.0] = 0
        labels, _ = _tidy_labels(labels, labels, min_area=int(0.3 * np.pi * nucleus_radius**2))
    k = int(labels.max())
    gain = np.exp(rng.normal(0.0, brightness_spread, size=k + 1)) / np.exp(brightness_spread**2 / 2)
    gain[0] = 0.0
    texture = np.clip(1.0 + 0.25 * _smooth_field(rng, shape, 1.2), 0.2, None)  # chromatin
    signal = gain[labels] * texture
    focused = ndi.gaussian_filter(signal, blur) if blur > 0 else signal
    signal = (1.0 - glow) * focused + glow * ndi.gaussian_filter(signal, glow_sigma)
    illum = background * np.clip(1.0 + 0.5 * _smooth_field(rng, shape, max(shape) / 4.0), 0.0, None)
    image = rng.poisson((signal + illum) * photons) / photons + rng.normal(0.0, read_noise, size=shape)
    centers = np.array(ndi.center_of_mass(labels > 0, labels, range(1, k + 1))).reshape(-1, 2)
    return SyntheticScene(np.clip(image, 0.0, None).astype(np.float32), labels, centers)
