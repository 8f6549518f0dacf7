"""Automatic scale: the pixel size at which an image's cells look like the model's.

A user often does not know (or mistypes) the pixel size, and the network is sensitive to
scale (±10 % costs 0.03-0.05 mAP on the dense set). :func:`estimate_scale` tries a few
zooms of a few small crops (at each zoom, the busiest windows of that zoom's side, apart
from each other), on a ladder of factors of 2, and keeps the zoom at which the network is
most sure of the cells it sees (the mean probability of the likeliest class over the
pixels it calls cell, pooled over the crops that show cells: :func:`pooled_confidence`),
unless that zoom enlarges the image 4x or more and the network reads noise as cells there
(:func:`reads_noise`);
it then refines that zoom, within a factor √2 either way (half way to the next rungs), by
the median size of the cells segmented there against the model's typical cell. It is
what ``pixel_size="auto"`` runs, the default for an image that carries no pixel size.

Until 2026-11-23 every zoom used the windows of the smallest zoom's side (512 px), so a
233 px-wide strip (the dense set's test strips) got one crop, and a crop of background
scored 0 in its zoom's mean. With a window per zoom and pooling, the share of images
whose applied zoom came within 25 % of the truth (dense strips and frames, four
synthetic looks; 0.5x, 0.6x, 1x, 2x; 104 images; benchmarks/scale_estimate.py) rose from 0.769 to 0.885, the strips at
1x from 4 to 6 of 7, and mAP with auto on the dense strips at 0.5x / 1x / 2x from
0.409 / 0.569 / 0.430 to 0.585 / 0.631 / 0.617 (0.648 with the pixel size given at 1x):
``benchmarks/generalization.py``, README "Figures".

The ladder was of factors of √2 (9 zooms) until 2026-11-23. Rungs of 2 cost 5/9 of the
network passes (``benchmarks/generalization.py``, 2026-11-23): on the 7 whole dense frames
at 0.5x and 2x the √2 ladder's outliers at 0.77-0.85 of the true pixel size came to
0.99-1.06 (case ``frames``), and mAP with auto rose on the synthetic looks at 0.5x
(+0.10 to +0.15), but fell on the dense validation strips (0.5x / 1x / 2x: 0.402 / 0.513 /
0.332 to 0.344 / 0.472 / 0.319), where the estimate fails with either ladder.

A zoom within a factor ``KEEP`` (√2) of 1 is not applied: the image is used at the
model's scale, as when no pixel size is given. The network works over that range, while
the estimate itself varies by 20-40 % on one look (2026-11-22: 0.31-0.59 µm on dense
T-cell frames of true 0.5 µm, one crop each), and each such error costs more than the
mismatch it would correct. The measured value is kept in the estimate.

Tried and not adopted (2026-11-23, the shipped model): choosing the rung by confidence
minus 0.3 x |ln(median cell diameter found there / the model's)|, so that the cells'
size votes at every rung. Share of images whose applied zoom came within 25 % of the
truth: on generalization.py's images (the dense strips and four synthetic looks at 0.5x,
1x, 2x) 0.63 -> 0.82 (the dense strips 0.38 -> 0.67); on images it was not chosen on (the 7
whole frames and new synthetic seeds at 0.5x, 0.6x, 1.4x, 2x) only 0.64 -> 0.75, the
frames 0.89 -> 0.86 (at 1.4x the size vote pushed 4 of 7 frames 22-44 % too far). It also
needs a segmentation per trial crop and rung, each dearer than the network pass on it
(0.09 s against 0.07 s for 128 px on one thread), which would break the 30 % budget.
The network's sizes are the weak part: it draws cells near its training size at any zoom
(on a dense strip at 1x, 12-16 px at zooms 0.5-2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .core import validate
from .core.params import Grid, SegmentParams
from .core.preprocess import rescale

STEP = 2.0  # between rungs of the zoom ladder
ZOOMS = (0.25, 0.5, 1.0, 2.0, 4.0)
CROP_SIDE = 128  # px on the model's grid, per trial
MIN_CELL_SHARE = 0.02  # a crop the network calls cell below this share does not vote
N_CROPS = 3  # trial crops per zoom: the busiest windows of its side that do not overlap
MIN_TRIAL_SIDE = 32  # px on the model's grid: a smaller crop is no trial
KEEP = float(np.sqrt(2.0))  # a zoom closer to 1 than this factor is not applied
# Below this correlation of neighbouring pixels an image is noise at its own pixel: there
# is nothing to measure (enlarged, noise reads as tiny cells, confidently: zoom 4-5 with
# confidence 0.69-0.70 on uniform noise). Real images measured 0.73-0.95 (dense strips and
# four synthetic looks at 0.5x and 1x, 2026-11-23), pixel noise 0.00.
MIN_NEIGHBOUR_CORRELATION = 0.3
# A rung that enlarges the image this much or more is not taken where the network calls at
# least NOISE_CELL_SHARE of a calm window cell (reads_noise). Enlarged 2x, noise is not read
# as cells (0.25-0.51 of the calm window on the images of reads_noise's note), but real cells
# filling a calm window are (whole_cell and membrane drawn at 0.5x: 0.6 and more): the
# check cannot tell them apart there, and is not needed.
NOISE_ZOOM = 4.0
NOISE_CELL_SHARE = 0.6


@dataclass(frozen=True)
class ScaleEstimate:
    """What :func:`estimate_scale` found.

    ``pixel_size`` is what to pass as the image's pixel size (µm): the image is then
    zoomed by ``zoom`` onto the model's grid. ``cell_diameter_px`` is the cells' median
    diameter in the image's own pixels; ``trials`` holds (zoom, score) per zoom tried.
    """

    pixel_size: float
    zoom: float
    cell_diameter_px: float
    confidence: float
    trials: tuple[tuple[float, float], ...]
    measured_zoom: float = 1.0  # before the prior: zoom is 1 where this is within KEEP of 1
    base_zoom: float = 1.0  # the zoom of an image at the model's scale (2 for a 2x model)
    # Zooms the network was surer at, passed over: there it read a calm window's noise as cells
    noise_zooms: tuple[float, ...] = ()

    @property
    def rung(self) -> float:
        """The zoom of the ladder the estimate took: the likeliest, less those passed over
        as noise (of equal scores, the smaller zoom), before the refinement."""
        return max((t for t in self.trials if t[0] not in self.noise_zooms), key=lambda t: t[1])[0]

    @property
    def measured_pixel_size(self) -> float:
        """The pixel size (µm) the measurement says, before the prior."""
        return self.pixel_size / self.zoom * self.measured_zoom

    @property
    def kept_model_scale(self) -> bool:
        """The estimate was close enough to the model's scale to leave the image as it is."""
        return self.zoom == self.base_zoom and self.measured_zoom != self.base_zoom


def _busiest_centres(image: np.ndarray, side: int, n: int = N_CROPS) -> list[tuple[int, int]]:
    """The centres of up to ``n`` ``side``-px windows with the most intensity variance
    (cells, not empty background), on a coarse grid of windows, none overlapping another."""
    h, w = image.shape
    rows, cols, var = _window_grid(image, side)
    windows = [(float(var[i, j]), int(r) + min(side, h) // 2, int(c) + min(side, w) // 2)
               for i, r in enumerate(rows) for j, c in enumerate(cols)]
    windows.sort(key=lambda t: -t[0])
    chosen: list[tuple[int, int]] = []
    for _, r, c in windows:
        if all(abs(r - r2) >= side or abs(c - c2) >= side for r2, c2 in chosen):
            chosen.append((r, c))
            if len(chosen) == n:
                break
    return chosen


def _window_grid(image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The corners of ``side``-px windows every half side (rows, cols) and the intensity
    variance of each window (:func:`_window_variances`)."""
    h, w = image.shape
    step = max(min(side, h, w) // 2, 1)
    rows = np.arange(0, max(h - side, 0) + 1, step)
    cols = np.arange(0, max(w - side, 0) + 1, step)
    return rows, cols, _window_variances(image, rows, cols, side)


def _window_variances(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, side: int) -> np.ndarray:
    """The variance of ``image[r : r + side : 4, c : c + side : 4]`` for every r in
    ``rows`` and c in ``cols``, from summed-area tables of the image sampled every 4th
    pixel, one per offset (r mod 4, c mod 4). By hand: np.var per window, its equal, took
    57 ms for the 4,000 windows of 32 px on a 1 Mpx frame (of 0.4 s for the estimate)."""
    h, w = image.shape
    nr, nc = len(range(0, min(side, h), 4)), len(range(0, min(side, w), 4))
    out = np.empty((len(rows), len(cols)))
    for a in np.unique(rows % 4):
        for b in np.unique(cols % 4):
            sub = image[a::4, b::4].astype(np.float64)  # a sixteenth of the image, not all of it
            tables = []
            for x in (sub, sub * sub):
                t = np.zeros((sub.shape[0] + 1, sub.shape[1] + 1))
                t[1:, 1:] = x.cumsum(0).cumsum(1)
                tables.append(t)
            ri, ci = np.flatnonzero(rows % 4 == a), np.flatnonzero(cols % 4 == b)
            r0, c0 = ((rows[ri] - a) // 4)[:, None], ((cols[ci] - b) // 4)[None, :]
            s1, s2 = (t[r0 + nr, c0 + nc] - t[r0, c0 + nc] - t[r0 + nr, c0] + t[r0, c0] for t in tables)
            mean = s1 / (nr * nc)
            out[np.ix_(ri, ci)] = np.maximum(s2 / (nr * nc) - mean * mean, 0.0)
    return out


def _crop(image: np.ndarray, centre: tuple[int, int], side: int) -> np.ndarray:
    h, w = image.shape
    r0 = int(np.clip(centre[0] - side // 2, 0, max(h - side, 0)))
    c0 = int(np.clip(centre[1] - side // 2, 0, max(w - side, 0)))
    return image[r0 : r0 + side, c0 : c0 + side]


def trial_crops(image: np.ndarray, zoom: float, side: int = CROP_SIDE) -> list[np.ndarray]:
    """The busiest windows of ``image`` for ``zoom`` (image px -> model-grid px), each
    ``side`` px once on the grid and apart from each other, rescaled onto it; a crop under
    32 px or constant is left out. Each zoom picks its own windows of its own side: windows
    of the smallest zoom's side (512 px for 128 at 0.25) left a 233 px-wide strip one crop."""
    crop_side = max(round(side / zoom), 1)
    out = []
    for centre in _busiest_centres(image, crop_side):
        crop = _crop(image, centre, crop_side)
        crop = rescale(crop, zoom) if zoom != 1 else crop
        if min(crop.shape) >= MIN_TRIAL_SIDE and np.ptp(crop) > 0:
            out.append(crop)
    return out


def trial_predictions(image: np.ndarray, zoom: float, net, info, device: str = "auto",
                      side: int = CROP_SIDE, tophat_px: float | None = None,
                      memo: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The trial crops of ``image`` at ``zoom`` (:func:`trial_crops`), each top-hat
    filtered with a radius of ``tophat_px`` grid pixels when given, and ``net``'s
    probability maps of each: ``[(crop, (C, M, N) maps)]``.

    ``memo``, a dict kept for one image, holds what was run, so that the estimate and the
    model choice (``choose.choose_model``) never run one model on the same crops twice: an
    image near the model's scale is chosen for at the estimate's rung 1, and the chosen
    model's own estimate tries the rung it was chosen at.
    """
    from .core.preprocess import tophat
    from .model.inference import predict_probabilities

    memo = {} if memo is None else memo
    where = (round(float(zoom), 9), side, tophat_px)
    key = (net, *where)  # a module hashes by identity
    if key in memo:
        return memo[key]
    if where not in memo:  # the crops, one set for every model
        crops = trial_crops(image, zoom, side)
        memo[where] = [tophat(crop, tophat_px) for crop in crops] if tophat_px else crops
    crops = memo[where]
    # A 32-px reflect border around each crop (overlap 32), not the 64 px of a whole
    # image's tiles: a 128-px crop then runs at 192², not 256² (0.22 s per estimate
    # against 0.30, best of 5 on a dense frame), and scale_estimate.py's hit rate
    # stays 0.885 (2026-11-24; with a 16-px border it fell to 0.875).
    memo[key] = [(crop, predict_probabilities(net, crop, device=device, overlap=32, normalize=info.normalize))
                 for crop in crops]
    return memo[key]


def neighbour_correlation(image: np.ndarray) -> float:
    """The correlation of each pixel with its right and lower neighbours (1: smooth, 0:
    independent pixels, as pure noise)."""
    x = np.asarray(image, np.float64)
    x = x - x.mean()
    var = float((x * x).mean())
    if var == 0:
        return 1.0
    return float(((x[:, :-1] * x[:, 1:]).mean() + (x[:-1] * x[1:]).mean()) / (2 * var))


def pooled_confidence(maps) -> float:
    """A rung's score: the mean probability of the likeliest class over every pixel the
    network calls cell (foreground > 0.5), pooled over the crops (C, M, N maps) in which it
    calls at least ``MIN_CELL_SHARE`` of the pixels cell; 0 when none does. A crop of
    background does not vote: a mean of per-crop scores, with 0 for such a crop, pulled
    its rung down (2026-11-23)."""
    from .pipeline import foreground_probability

    sure, called = 0.0, 0
    for probs in maps:
        cellish = foreground_probability(probs) > 0.5
        if cellish.mean() >= MIN_CELL_SHARE:
            sure += float(probs.max(axis=0)[cellish].sum())
            called += int(cellish.sum())
    return sure / called if called else 0.0


def reads_noise(image: np.ndarray, zoom: float, net, info, device: str = "auto",
                side: int = CROP_SIDE) -> bool:
    """The network, at ``zoom`` (> 1: the image enlarged), calls at least
    ``NOISE_CELL_SHARE`` of a calm window cell: the window at the first quartile of
    intensity variance, which in an image of cells on a background is background.
    Enlarged 4x, pixel noise reads as cells of the model's size: the network called 0.63-0.72
    of such windows cell on the four real nuclear sets and on real GFP-filled stem cells
    (CTC Fluo-C2DL-MSC), where the whole image at that zoom became ~40,000 false cells;
    real cells that small called 0.01-0.49 (synthetic looks and dense strips drawn at 0.25x;
    2026-11-24)."""
    from .model.inference import predict_probabilities
    from .pipeline import foreground_probability

    window = max(round(side / zoom), 1)
    rows, cols, var = _window_grid(image, window)
    i, j = np.unravel_index(np.argsort(var, axis=None, kind="stable")[(var.size - 1) // 4], var.shape)
    crop = image[rows[i] : rows[i] + window, cols[j] : cols[j] + window]
    crop = rescale(crop, zoom)
    if min(crop.shape) < 32 or np.ptp(crop) == 0:
        return False
    probs = predict_probabilities(net, crop, device=device, overlap=32, normalize=info.normalize)
    return float((foreground_probability(probs) > 0.5).mean()) >= NOISE_CELL_SHARE


def applied_zoom(measured: float) -> float:
    """The zoom applied for a measured one: 1 (the model's scale) within a factor ``KEEP``
    of 1, bounds included. Inclusive and in log space because a refinement stopped at its
    reach from rung 1 lands on the bound itself, give or take rounding, on either side."""
    return 1.0 if abs(np.log(measured)) <= np.log(KEEP) + 1e-9 else float(measured)


def combine(estimates) -> tuple[float, float]:
    """One scale for images taken at one scale (one experiment's), from each one's
    :class:`ScaleEstimate` by the same model: (the pixel size to use, µm; the median of the
    measured zooms). The median of the measured zooms, with the rule of
    :func:`applied_zoom` applied to it: an image's estimate varies by 20-40 % on one look,
    and a median of several outvotes the one that strays (on 7 dense strips at 1x, one read
    0.69 of the true pixel size, and was moved)."""
    estimates = list(estimates)
    if not estimates:
        raise ValueError("no scale estimate to combine")
    base, grid_px = estimates[0].base_zoom, estimates[0].pixel_size / estimates[0].zoom
    if any(e.base_zoom != base or not np.isclose(e.pixel_size / e.zoom, grid_px) for e in estimates):
        raise ValueError("scale estimates by different models cannot be combined")
    measured = float(np.median([e.measured_zoom for e in estimates]))
    return base * applied_zoom(measured / base) * grid_px, measured


def estimate_scale(image: np.ndarray, net, info, device: str = "auto",
                   zooms: tuple[float, ...] = ZOOMS, side: int = CROP_SIDE,
                   memo: dict | None = None) -> ScaleEstimate:
    """Estimate the pixel size (µm) that brings ``image``'s cells to the model's size.

    Parameters
    ----------
    image : (M, N) ndarray
        One channel (validated by the caller).
    net, info : UNet, ModelInfo
        The model; ``info.pixel_size`` and ``info.cell_diameter_um`` define its cells' size.
    zooms : tuple of float
        Zoom factors tried (image px -> model-grid px), times 2 for a 2x model (its image
        pixel size twice its grid's: ``pipeline.image_pixel_size``).
    side : int
        Side of each trial crop on the model's grid, px.
    memo : dict, optional
        The network passes already run on this image (:func:`trial_predictions`).

    Returns
    -------
    ScaleEstimate

    Raises
    ------
    ValueError
        The image is too small for any trial, noise (``MIN_NEIGHBOUR_CORRELATION``), no
        zoom shows the network any cells, or every zoom that does reads noise (``reads_noise``).
    """
    from .pipeline import Prediction, image_pixel_size

    image = np.asarray(image, dtype=np.float32)
    correlation = neighbour_correlation(image)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        raise ValueError(f"neighbouring pixels are nearly independent (correlation {correlation:.2f}): "
                         "the image looks like noise, with no cells to measure")
    model_px = float(info.pixel_size or 0.5)
    grid = Grid(model_px, info.cell_diameter_um)
    model_diameter = info.cell_diameter_um / model_px  # px on the model's grid
    # A model whose network works at a finer grid than its images (a 2x model, pipeline's
    # image_pixel_size) sees an image at its image pixel size through a zoom of 2, not 1:
    # the ladder and the zoom kept as it is centre there.
    image_px = image_pixel_size(info)
    base = image_px / model_px if image_px else 1.0
    zooms = tuple(base * z for z in zooms)
    if base in zooms and round(min(image.shape) * base) < MIN_TRIAL_SIDE:
        # Too small for a trial at the model's own scale (under 32 px a side): only the
        # enlarging rungs would have a trial, and they would always win. Refused in words
        # (taken at the model's scale) rather than enlarged whatever its true scale.
        raise ValueError(f"the image ({image.shape[0]} x {image.shape[1]} px) is too small to estimate "
                         f"its scale: under {MIN_TRIAL_SIDE} px on the model's grid; give its pixel size "
                         "or cell diameter instead")
    ranked = []
    for z in zooms:
        crops = trial_predictions(image, z, net, info, device, side, memo=memo)
        if crops:
            ranked.append((z, pooled_confidence([probs for _, probs in crops]), crops))
    trials = tuple((z, score) for z, score, _ in ranked)  # in ladder order
    if not ranked:
        raise ValueError(f"cannot estimate the scale of this image (shape {image.shape}): it is "
                         "constant, or too small at every zoom tried; give its pixel size or cell "
                         "diameter instead")
    ranked.sort(key=lambda t: -t[1])  # stable: of equal scores, the smaller zoom
    # The likeliest rung, unless it enlarges the image 4x or more and the network reads its
    # noise as cells there (reads_noise): then the next.
    noise = []
    for rung in ranked:
        if rung[1] == 0.0 or rung[0] / base < NOISE_ZOOM or not reads_noise(image, rung[0], net, info,
                                                                             device, side):
            z, score, crops = rung
            break
        noise.append(rung[0])
    else:
        raise ValueError(f"at every zoom tried ({', '.join(f'{z:.3g}' for z in noise)}) the network "
                         "reads the image's background noise as cells: give the pixel size or the "
                         "cell diameter instead")
    if score == 0.0:
        raise ValueError("the network sees no cells at any scale tried"
                         + (f" but {', '.join(f'{z:.3g}' for z in noise)}, where it reads noise as cells"
                            if noise else "") + ": give the pixel size or the cell diameter instead")
    areas = []
    for grid_crop, probs in crops:
        cells, _ = Prediction(grid_crop, probs, grid_crop, grid, SegmentParams()).segment_grid()
        # Cells cut by the crop's edge count too: leaving them out (clear_border) measured
        # worse (2026-11-23, 7 dense frames at 0.5x, 1x, 2x: 17 of 21 within 15 % of the
        # true pixel size against 19 of 21, the whole cells then reading 5-10 % large).
        # Nor did the whole cells' median with the Miles-Lantuéjoul weight (1 / the crop
        # positions a cell's box fits in): applied zoom within 25 % 0.817 against 0.885
        # on the dense strips and frames and four synthetic looks at 0.5, 0.6, 1 and 2x.
        a = np.bincount(cells.ravel())[1:]
        areas.append(a[a > 0])
    areas = np.concatenate(areas)
    refined = z
    if len(areas):
        diameter = 2.0 * np.sqrt(np.median(areas) / np.pi)  # px on the trial's grid
        # Half way to the neighbouring rungs: the size refines the zoom, it does not replace it.
        reach = np.sqrt(STEP)
        refined = float(np.clip(z * model_diameter / diameter, z / reach, z * reach))
    # Never a zoom the pipeline refuses (a 2x model's ladder reaches 8 before refining).
    refined = float(np.clip(refined, 1 / validate.MAX_RESCALE, validate.MAX_RESCALE))
    zoom = base * applied_zoom(refined / base)
    return ScaleEstimate(pixel_size=zoom * model_px, zoom=zoom, cell_diameter_px=model_diameter / refined,
                         confidence=score, trials=trials, measured_zoom=refined, base_zoom=base,
                         noise_zooms=tuple(noise))
