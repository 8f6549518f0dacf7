"""3-class training targets (seed, cytoplasm, background) from instance masks.

The rule (numpy / scipy only, no torch):

* **background** (class 2): outside every cell, plus the one-pixel line where a cell
  touches another cell, so that two touching cells are never joined by cell pixels;
* **seed** (class 0): the nucleus where nucleus labels are given (synthetic whole-cell
  images); otherwise each cell's interior: pixels whose distance to the cell's own
  outline, divided by the largest such distance in that cell, exceeds
  ``seed_fraction`` (0.5). Every cell gets at least its deepest pixel;
* **cytoplasm** (class 1): the rest of each cell.

**Graded seeds** (training option ``seed_target="soft"``, :func:`encode_soft_seeds`):
instead of a hard seed / cytoplasm cut, a cell pixel's target is a share ``s`` of seed and
``1 - s`` of cytoplasm, ``s`` rising linearly with the relative depth from 0 at
``SOFT_RAMP[0]`` to 1 at ``SOFT_RAMP[1]`` (0.5 at depth 0.5, where the hard rule cuts).
The seed probability then peaks at each cell's centre and dips between touching cells
instead of forming flat plateaus that a blurred contact can join, as networks that
regress a distance map separate touching nuclei. The cell probability (seed +
cytoplasm) is the same as with hard seeds.

For training, :func:`contact_lines` marks the background that separates two cells (their
touching line, and background within ``gap`` px of two cells); the loss may weight it
more (``TrainConfig.contact_weight``), as the original U-Net weighted the gaps between
touching cells, because a cell-probability bridge there merges two cells.

**Touch class** (a 4-class model, ``TrainConfig.touch_class``): the touching line itself
(cell pixels next to another cell, coded ``TOUCH`` in every training target) is a class
of its own instead of background. The expert masks share borders, so these pixels belong
to cells; a 3-class model learns to call them background and leaves gaps the truth does
not have. At inference (``pipeline.Prediction``) touch pixels count as foreground, while
the watershed's landscape (seed + cytoplasm) keeps its ridge there, so two touching
cells still part on that line and then share it, as in the DSB 2018 winners' contour /
touch outputs. For a 3-class model ``TOUCH`` is background weighted like ``CONTACT``
(the targets of earlier versions, exactly).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

SEED, CYTOPLASM, BACKGROUND = 0, 1, 2
CONTACT = 3  # background between two cells, in training targets only (see contact_lines)
TOUCH_CLASS = 3  # the touch class's index in a 4-class model's output
# Training targets only: a cell pixel with seed share s is coded SOFT + round(s * SOFT_LEVELS)
# (uint8, so that it crops, rotates and pads like the class codes; see encode_soft_seeds).
SOFT, SOFT_LEVELS = 4, 248
# Training targets only: a cell pixel on the line where it touches another cell (background
# for a 3-class model, the touch class for a 4-class one). Above every SOFT code.
TOUCH = 253
SOFT_RAMP = (0.25, 0.75)  # relative depths where the seed share is 0 and 1
# Training targets only: a pixel the loss ignores (a cell cut by the edge of a held-out band,
# whose true outline lies in pixels the run may not see). Above every SOFT code.
IGNORE = 255


def touching_border(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell with an 8-neighbour in a *different* cell (not background)."""
    labels = np.asarray(labels)
    pad = np.pad(labels, 1, mode="constant")
    out = np.zeros(labels.shape, dtype=bool)
    h, w = labels.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            nb = pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            out |= (nb != labels) & (nb > 0)
    return out & (labels > 0)


def relative_depth(labels: np.ndarray) -> np.ndarray:
    """Distance to the cell's own outline divided by the cell's largest distance, in (0, 1]
    inside cells and 0 outside."""
    labels = np.asarray(labels)
    inside = (labels > 0) & ~touching_border(labels)
    # Distance to the nearest pixel that is background or another cell's border.
    dist = ndi.distance_transform_edt(inside)
    if labels.max() == 0:
        return dist
    peak = ndi.maximum(dist, labels, index=np.arange(labels.max() + 1))
    peak = np.asarray(peak, dtype=float)
    peak[peak == 0] = 1.0
    return dist / peak[labels]


def make_targets(
    labels: np.ndarray, nucleus_labels: np.ndarray | None = None, seed_fraction: float = 0.5
) -> np.ndarray:
    """Class index per pixel: 0 seed, 1 cytoplasm, 2 background.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Cell instance labels, 0 = background.
    nucleus_labels : (M, N) ndarray of int, optional
        Nucleus labels; when given they are the seeds.
    seed_fraction : float
        Relative depth above which a pixel is a seed (when no nucleus labels).

    Returns
    -------
    target : (M, N) ndarray of uint8
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    target = np.full(labels.shape, BACKGROUND, dtype=np.uint8)
    cell = (labels > 0) & ~touching_border(labels)
    target[cell] = CYTOPLASM
    if nucleus_labels is not None:
        target[cell & (np.asarray(nucleus_labels) > 0)] = SEED
    else:
        depth = relative_depth(labels)
        target[cell & (depth > seed_fraction)] = SEED
        target[cell & (depth >= 1.0)] = SEED  # the deepest pixel of every cell
    return target


def contact_lines(labels: np.ndarray, gap: int = 2) -> np.ndarray:
    """Background pixels between two different cells: where cells touch (the line
    :func:`make_targets` makes background), and outside cells, where two cells grown by
    ``gap`` px meet."""
    from skimage.segmentation import expand_labels

    labels = np.asarray(labels)
    out = touching_border(labels)
    if gap > 0:
        out |= (labels == 0) & touching_border(expand_labels(labels, gap))
    return out


def seed_share(labels: np.ndarray, ramp: tuple[float, float] = SOFT_RAMP) -> np.ndarray:
    """Graded seed target in [0, 1]: 0 outside cells, rising linearly with the relative
    depth from ``ramp[0]`` (0) to ``ramp[1]`` (1)."""
    lo, hi = ramp
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"seed ramp must satisfy 0 <= low < high <= 1, got {ramp}")
    return np.clip((relative_depth(labels) - lo) / (hi - lo), 0.0, 1.0)


def encode_soft_seeds(target: np.ndarray, labels: np.ndarray, ramp: tuple[float, float] = SOFT_RAMP) -> np.ndarray:
    """Recode the cell pixels (seed or cytoplasm) of a class target as graded seeds:
    ``SOFT + round(share * SOFT_LEVELS)``. Background, CONTACT and TOUCH pixels are kept."""
    out = np.array(target, dtype=np.uint8, copy=True)
    cell = (out == SEED) | (out == CYTOPLASM)
    share = seed_share(labels, ramp)
    out[cell] = SOFT + np.round(share[cell] * SOFT_LEVELS).astype(np.uint8)
    return out


def target_probabilities(target, n_classes: int = 3):
    """(B, H, W) integer training codes -> (B, n_classes, H, W) float probabilities:
    one-hot for class codes (CONTACT and IGNORE count as background; the loss gives
    IGNORE pixels no weight; TOUCH is the touch class with 4 classes, else background),
    ``[s, 1 - s, 0]`` for graded seeds. Takes and returns torch tensors (imported here:
    this module stays numpy-only)."""
    import torch
    import torch.nn.functional as F

    if n_classes not in (3, 4):
        raise ValueError(f"a model has 3 classes (seed, cytoplasm, background) or 4 (+ touch), not {n_classes}")
    soft = (target >= SOFT) & (target <= SOFT + SOFT_LEVELS)
    hard = torch.where((target == CONTACT) | (target == IGNORE) | (target == TOUCH), BACKGROUND, target)
    hard = torch.where(soft, CYTOPLASM, hard)
    if n_classes == 4:
        hard = torch.where(target == TOUCH, TOUCH_CLASS, hard)
    probs = F.one_hot(hard, n_classes).permute(0, 3, 1, 2).float()
    if bool(soft.any()):
        share = torch.where(soft, (target - SOFT).float() / SOFT_LEVELS, 0.0)
        probs[:, SEED] += share
        probs[:, CYTOPLASM] -= share
    return probs
