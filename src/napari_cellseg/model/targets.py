"""3-class training targets (seed, cytoplasm, background) from instance masks.

The rule (numpy / scipy only, no torch):

* **background** (class 2): outside every cell, plus the one-pixel line where a cell
  touches another cell, so that two touching cells are never joined by cell pixels;
* **seed** (class 0): the nucleus where nucleus labels are given (synthetic whole-cell
  images); otherwise each cell's interior: pixels whose distance to the cell's own
  outline, divided by the largest such distance in that cell, exceeds
  ``seed_fraction`` (0.5). Every cell gets at least its deepest pixel;
* **cytoplasm** (class 1): the rest of each cell.

For training, :func:`contact_lines` marks the background that separates two cells (their
touching line, and background within ``gap`` px of two cells); the loss may weight it
more (``TrainConfig.contact_weight``), as the original U-Net weighted the gaps between
touching cells, because a cell-probability bridge there merges two cells.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

SEED, CYTOPLASM, BACKGROUND = 0, 1, 2
CONTACT = 3  # background between two cells, in training targets only (see contact_lines)


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
