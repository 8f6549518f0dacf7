"""Training examples: normalised images with their class targets, train / validation
splits, synthetic images to mix in, augmentation and random patches.

Everything a training run reads goes through here; the loop itself (``train.py``) only
asks a :class:`PatchSampler` for batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.preprocess import percentile_normalize
from .targets import (
    BACKGROUND,
    CONTACT,
    IGNORE,
    TOUCH,
    contact_lines,
    encode_soft_seeds,
    make_targets,
    touching_border,
)


@dataclass
class Example:
    """One training image: normalised intensities, class targets, instance labels."""

    image: np.ndarray  # (M, N) float32, percentile-normalised
    target: np.ndarray  # (M, N) uint8 training code (targets.py): class index, CONTACT or SOFT + seed share
    labels: np.ndarray | None = None  # (M, N) int instance labels (for validation, scale jitter)
    name: str = ""
    nucleus_labels: np.ndarray | None = None  # what the seed targets came from, if given
    seed_target: str = "hard"


def build_target(labels: np.ndarray, nucleus_labels: np.ndarray | None = None,
                 seed_target: str = "hard") -> np.ndarray:
    """The training code of every pixel of a label image (see :func:`make_example`)."""
    target = make_targets(labels, nucleus_labels)
    target[contact_lines(labels) & (target == BACKGROUND)] = CONTACT
    target[touching_border(labels)] = TOUCH  # the touching line itself (see targets.py)
    if seed_target == "soft" and nucleus_labels is None:
        target = encode_soft_seeds(target, labels)
    return target


def make_example(
    image: np.ndarray,
    labels: np.ndarray,
    nucleus_labels: np.ndarray | None = None,
    name: str = "",
    normalize: tuple[float, float] = (1.0, 99.8),
    seed_target: str = "hard",
) -> Example:
    """Normalise an image and build its training target: the 3 classes, the background
    between two cells marked ``CONTACT`` (the loss counts it as background, weighted) and
    the line where two cells touch marked ``TOUCH`` (background weighted like ``CONTACT``
    for a 3-class model, the touch class for a 4-class one). ``seed_target``
    "soft": graded seeds where no nucleus labels are given (``targets.encode_soft_seeds``).

    Raises
    ------
    ValueError
        ``seed_target`` is not "hard" or "soft", or image and labels differ in shape.
    """
    if seed_target not in ("hard", "soft"):
        raise ValueError(f"seed_target must be 'hard' or 'soft', got {seed_target!r}")
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape != labels.shape:
        raise ValueError(f"{name or 'image'}: image shape {image.shape} differs from its "
                         f"mask shape {labels.shape}")
    target = build_target(labels, nucleus_labels, seed_target)
    return Example(percentile_normalize(image, *normalize), target, labels.astype(np.int32), name,
                   None if nucleus_labels is None else np.asarray(nucleus_labels), seed_target)


def split_pair(
    image: np.ndarray, labels: np.ndarray, fraction: float = 0.2, name: str = "", **example_kwargs
) -> tuple[Example, Example | None]:
    """Examples of the left part of an image (training) and of the right ``fraction`` of
    its columns (validation), as the dense-tissue paper holds out a right-hand strip;
    ``fraction`` 0: the whole image for training and no validation part (None).

    Each part is normalised on its own, as a held-out image would be, so that the
    validation AP printed while training is the figure ``benchmarks/accuracy_dense.py``
    reports for the same strips. ``example_kwargs`` go to :func:`make_example`.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return make_example(image, labels, name=name, **example_kwargs), None
    image, labels = np.asarray(image), np.asarray(labels)
    cut = round(image.shape[1] * (1 - fraction))
    left = make_example(image[:, :cut], labels[:, :cut], name=name, **example_kwargs)
    right = make_example(image[:, cut:], labels[:, cut:], name=f"{name}_val", **example_kwargs)
    return left, right


def band_columns(width: int, band: tuple[int, int]) -> tuple[int, int]:
    """First and past-the-end column of band ``k`` of ``n`` equal vertical bands of an image
    ``width`` px wide (``band = (k, n)``; edges at ``round(width * i / n)``)."""
    k, n = band
    if not (isinstance(n, int) and n >= 2 and isinstance(k, int) and 0 <= k < n):
        raise ValueError(f"band must be (k, n) with n >= 2 and 0 <= k < n, got {band}")
    return round(width * k / n), round(width * (k + 1) / n)


def split_band(
    image: np.ndarray, labels: np.ndarray, band: tuple[int, int], name: str = "", **example_kwargs
) -> tuple[list[Example], Example]:
    """Spatial cross-validation: band ``k`` of ``n`` vertical bands held out for
    validation, the columns left and right of it for training.

    Each part is normalised on its own (as :func:`split_pair` does). In a training part,
    the cells cut by the band's edge are coded ``IGNORE``: their true outline runs into
    held-out pixels, and a loss on their stump would teach the network that cells end
    there. Parts narrower than 8 px are dropped.

    Returns
    -------
    train : list of Example
        The left and right parts (one of them when the band is at an image edge).
    val : Example
        The band, with all its cells (cut ones included, as a test strip has them).
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape != labels.shape:
        raise ValueError(f"{name or 'image'}: image shape {image.shape} differs from its "
                         f"mask shape {labels.shape}")
    c0, c1 = band_columns(image.shape[1], band)
    train = []
    for cols, edge, side in ((np.s_[:c0], -1, "left"), (np.s_[c1:], 0, "right")):
        lab = labels[:, cols]
        if lab.shape[1] < 8:
            continue
        ex = make_example(image[:, cols], lab, name=f"{name}_{side}", **example_kwargs)
        cut = np.unique(lab[:, edge])
        ex.target[np.isin(lab, cut[cut > 0])] = IGNORE
        train.append(ex)
    val = make_example(image[:, c0:c1], labels[:, c0:c1], name=f"{name}_band{band[0]}", **example_kwargs)
    return train, val


def tissue_pairs(n: int, seed: int = 0, size: int = 256) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` synthetic tissue images in the dense set's look (``core.synthetic.make_tissue_image``)
    as (name, image, labels) pairs, their looks drawn at random: cell radius 5.5-10 px,
    density, stained share, brightness spread, photon count (noise) and blur; for
    pretraining."""
    from ..core.synthetic import make_tissue_image

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        scene = make_tissue_image(
            seed=int(rng.integers(1 << 31)), shape=(size, size),
            cell_radius=float(rng.uniform(5.5, 10.0)), density=float(rng.uniform(0.6, 1.0)),
            stained_fraction=float(rng.uniform(0.4, 1.0)), brightness_spread=float(rng.uniform(0.3, 0.8)),
            photons=float(np.exp(rng.uniform(np.log(15), np.log(300)))), blur=float(rng.uniform(0.7, 1.5)))
        if scene.labels.max() > 0:  # a small image may hold no stained cell: draw again
            out.append((f"tissue{len(out)}", scene.image, scene.labels))
    return out


def synthetic_examples(n: int, seed: int = 0, size: int = 256, nuclei: int = 0) -> list[Example]:
    """Whole-cell synthetic images (both stains, a range of cell sizes) as examples, then
    ``nuclei`` images of nuclei in a DNA stain (``core.synthetic.make_nuclei_image``: radius
    5-10 px, density, brightness spread, blur, out-of-focus glow and photon count drawn at
    random; their own random stream, so the whole-cell images stay those of ``nuclei=0``)."""
    from ..core.synthetic import make_nuclei_image, make_whole_cell_image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = make_whole_cell_image(
            seed=int(rng.integers(1 << 31)),
            shape=(size, size),
            cell_radius=float(rng.uniform(5.5, 10.0)),
            density=float(rng.uniform(0.45, 0.95)),
            stain="membrane" if i % 2 == 0 else "cytoplasm",
            noise_scale=float(rng.uniform(0.02, 0.1)),
        )
        out.append(make_example(scene.image, scene.labels, scene.nucleus_labels, f"synthetic{i}"))
    rng = np.random.default_rng([seed, 1])
    for _ in range(20 * nuclei):  # an image too small for one whole nucleus is drawn again
        if len(out) == n + nuclei:
            break
        radius = float(rng.uniform(5.0, 10.0))
        scene = make_nuclei_image(
            seed=int(rng.integers(1 << 31)), shape=(size, size), nucleus_radius=radius,
            density=float(rng.uniform(0.25, 0.8)), brightness_spread=float(rng.uniform(0.2, 0.7)),
            blur=float(rng.uniform(0.5, 1.5)), glow=float(rng.uniform(0.0, 0.5)),
            glow_sigma=radius * float(rng.uniform(0.2, 0.6)),
            photons=float(np.exp(rng.uniform(np.log(20), np.log(500)))),
            background=float(rng.uniform(0.0, 0.15)))
        if scene.labels.max() > 0:
            out.append(make_example(scene.image, scene.labels, None, f"nuclei{len(out) - n}"))
    if len(out) < n + nuclei:
        raise ValueError(f"{size}-px synthetic images hold no whole nucleus of radius 5-10 px: "
                         "make them larger")
    return out


def median_cell_diameter(labels: Sequence[np.ndarray]) -> float:
    """Median equivalent diameter (px) of the labelled cells of one or more label images.

    The equivalent diameter of a cell is that of the disc of its area. Cells cut by an
    image edge are left out (their area is only part of the cell), unless no other cell
    is left.

    Parameters
    ----------
    labels : sequence of (M, N) int ndarray
        Instance label images, 0 the background.

    Returns
    -------
    float
        The median diameter in pixels.

    Raises
    ------
    ValueError
        No labelled cell in any image.
    """
    inner, every = [], []
    for lab in labels:
        lab = np.asarray(lab)
        if lab.ndim != 2:
            raise ValueError(f"expected 2-D label images, got shape {lab.shape}")
        areas = np.bincount(lab.ravel().astype(np.int64))
        present = np.flatnonzero(areas)
        present = present[present > 0]
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        every.append(areas[present])
        inner.append(areas[np.setdiff1d(present, edge)])
    areas = np.concatenate(inner) if sum(len(a) for a in inner) else np.concatenate(every or [[]])
    if len(areas) == 0:
        raise ValueError("no labelled cell to measure a diameter from")
    return float(np.median(np.sqrt(4.0 * areas / np.pi)))


def augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """90-degree rotations, flips, gain / offset / gamma jitter and extra noise.

    No arbitrary-angle rotation: the dense-tissue paper found it hurts.
    """
    k = int(rng.integers(4))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    x = np.clip(x, 0, None) ** gamma
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.05, 0.05)
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.01, 0.06), size=x.shape)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def check_scale_jitter(scale_jitter) -> tuple[float, float]:
    """A zoom range ``(lo, hi)`` as floats.

    Raises
    ------
    ValueError
        Not two numbers with ``0 < lo <= hi``.
    """
    lo, hi = (float(v) for v in scale_jitter)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_jitter must be (lo, hi) with 0 < lo <= hi, got {tuple(scale_jitter)}")
    return lo, hi


def check_blur(blur, blur_p: float = 0.3) -> tuple[float, float]:
    """``(blur, blur_p)`` as floats, or ValueError: blur is 0 (off) or the largest sigma
    (px, >= 0.5), blur_p a probability."""
    blur, blur_p = float(blur), float(blur_p)
    if not (blur == 0 or 0.5 <= blur < float("inf")) or not 0 <= blur_p <= 1:
        raise ValueError(f"blur must be 0 (off) or a sigma of at least 0.5 px, and blur_p in [0, 1]; "
                         f"got blur={blur}, blur_p={blur_p}")
    return blur, blur_p


class PatchSampler:
    """Random patches from a set of examples (real and synthetic).

    ``scale_jitter=(lo, hi)``: with probability ``scale_p`` a patch is drawn at a random
    zoom, log-uniform in ``[lo, hi]`` (2: cells twice as large), so the network sees its
    cells at other sizes than the training pixel size. The image is resampled (linear,
    anti-aliased when shrinking), the labels by nearest neighbour, and the targets are
    built again from the resampled labels: a one-pixel border stays one pixel wide at
    every zoom. Examples without labels are not zoomed.

    ``blur=s``: with probability ``blur_p`` a patch's image (not its targets) is blurred by
    a Gaussian of sigma uniform in [0.5, s] px, as a coarser optic or a thicker section
    would blur it: the cells are where they were, their edges softer. 0: off.
    """

    #: context (px, at the patch's scale) around a zoomed patch when its targets are built,
    #: so that a cell cut by the patch edge gets its seed from its whole outline
    CONTEXT = 16

    def __init__(
        self,
        real: Sequence[Example],
        synthetic: Sequence[Example] = (),
        patch: int = 176,
        synthetic_fraction: float = 0.2,
        scale_jitter: tuple[float, float] = (1.0, 1.0),
        scale_p: float = 0.5,
        blur: float = 0.0,
        blur_p: float = 0.3,
    ):
        lo, hi = check_scale_jitter(scale_jitter)
        if not 0 <= scale_p <= 1:
            raise ValueError(f"scale_p must be in [0, 1], got {scale_p}")
        self.blur, blur_p = check_blur(blur, blur_p)
        self.blur_p = blur_p if self.blur else 0.0
        self.scale_jitter = (lo, hi)
        self.scale_p = scale_p if hi > lo or lo != 1 else 0.0
        self.real = [e for e in real if min(e.image.shape) >= 8]
        self.synthetic = list(synthetic)
        if not self.real and not self.synthetic:
            raise ValueError("no training images")
        self.patch = patch
        self.synthetic_fraction = synthetic_fraction if self.synthetic else 0.0
        if not self.real:
            self.synthetic_fraction = 1.0
        # Pick real images in proportion to their area.
        areas = np.array([e.image.size for e in self.real], dtype=float)
        self.weights = areas / areas.sum() if len(areas) else areas

    def _crop(self, rng: np.random.Generator, e: Example) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        h, w = e.image.shape
        x = np.zeros((p, p), np.float32)
        y = np.full((p, p), BACKGROUND, np.uint8)
        r0 = int(rng.integers(0, max(h - p, 0) + 1))
        c0 = int(rng.integers(0, max(w - p, 0) + 1))
        ph, pw = min(p, h), min(p, w)
        x[:ph, :pw] = e.image[r0 : r0 + ph, c0 : c0 + pw]
        y[:ph, :pw] = e.target[r0 : r0 + ph, c0 : c0 + pw]
        return x, y

    def _crop_zoomed(self, rng: np.random.Generator, e: Example, zoom: float) -> tuple[np.ndarray, np.ndarray]:
        from skimage.transform import resize

        out = self.patch + 2 * self.CONTEXT
        q = max(round(out / zoom), 8)  # the window of the image that becomes the patch
        # The window's corner; an image smaller than the window lies at a random place in it
        # (a negative corner), padded with background, so the context border does not eat it.
        corner = [int(rng.integers(min(0, n - q), max(0, n - q) + 1)) for n in e.image.shape]
        win = tuple(slice(max(k, 0), k + q) for k in corner)
        fill = []
        for k, n in zip(corner, e.image.shape, strict=True):
            before = max(-k, 0)
            fill.append((before, q - before - (min(k + q, n) - max(k, 0))))
        parts = [e.image[win], e.labels[win], e.target[win] == IGNORE]
        if e.nucleus_labels is not None:
            parts.append(e.nucleus_labels[win])
        parts = [np.pad(a, fill) for a in parts]
        x = resize(parts[0], (out, out), order=1, anti_aliasing=zoom < 1, preserve_range=True)
        lab, ignore, *nuc = (resize(a, (out, out), order=0, anti_aliasing=False, preserve_range=True)
                             for a in parts[1:])
        y = build_target(lab.astype(np.int32), nuc[0].astype(np.int32) if nuc else None, e.seed_target)
        y[ignore.astype(bool)] = IGNORE
        inner = np.s_[self.CONTEXT : self.CONTEXT + self.patch, self.CONTEXT : self.CONTEXT + self.patch]
        return x[inner].astype(np.float32), y[inner]

    def _blurred(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """``x`` blurred with probability ``blur_p`` (no draw at all when blur is off, so
        that runs without it replay exactly)."""
        if not self.blur_p or rng.random() >= self.blur_p:
            return x
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(x, float(rng.uniform(0.5, self.blur)), mode="reflect").astype(np.float32)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` augmented patches: images (n, 1, P, P) float32, codes (n, P, P) int64."""
        xs, ys = [], []
        for _ in range(n):
            if rng.random() < self.synthetic_fraction:
                e = self.synthetic[int(rng.integers(len(self.synthetic)))]
            else:
                e = self.real[int(rng.choice(len(self.real), p=self.weights))]
            if self.scale_p and e.labels is not None and rng.random() < self.scale_p:
                zoom = float(np.exp(rng.uniform(*np.log(self.scale_jitter))))
                x, y = self._crop_zoomed(rng, e, zoom)
            else:
                x, y = self._crop(rng, e)
            x, y = augment(rng, self._blurred(rng, x), y)
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys).astype(np.int64))
