"""The one relabelling helper: drop objects and renumber the rest 1..K, in order.

``skimage.segmentation.relabel_sequential`` renumbers but filters nothing and returns
its maps through ``ArrayMap`` objects; every stage here needs "drop these ids, number the
rest 1..K" in one look-up-table pass, so it is written once, here.
"""

from __future__ import annotations

import numpy as np


def compact(
    labels: np.ndarray,
    min_size: int = 0,
    keep: np.ndarray | None = None,
    dtype: type = np.int32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber the objects of a label image 1..K in the order of their ids, dropping
    those under ``min_size`` pixels and those that ``keep`` marks False.

    Parameters
    ----------
    labels : ndarray of int
        0 is background; ids need not be consecutive, must be >= 0.
    min_size : int
        Smallest object kept, in pixels.
    keep : (max(labels) + 1,) ndarray of bool, optional
        Per id: False drops the object (entry 0 is ignored).
    dtype : numpy integer type
        Of the renumbered image.

    Returns
    -------
    relabelled : ndarray of ``dtype``, the shape of ``labels``
    ids : (K,) ndarray of int64
        The original id of each new id 1..K.
    areas : (K,) ndarray of int64
        Their areas in pixels.
    """
    labels = np.asarray(labels)
    flat = labels.ravel()
    empty = np.zeros(0, np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError(f"labels must be >= 0, got a minimum of {flat.min()}")
    if flat.size == 0 or flat.max() == 0:
        return np.zeros(labels.shape, dtype), empty, empty
    top = int(flat.max())
    min_size = max(int(min_size), 1)
    if top < 4 * flat.size + 1024:
        area = np.bincount(flat, minlength=top + 1)
        ok = area >= min_size
        if keep is not None:
            keep = np.asarray(keep, dtype=bool)
            if keep.shape != (top + 1,):
                raise ValueError(f"keep must have one entry per id 0..{top}, got shape {keep.shape}")
            ok &= keep
        ok[0] = False
        ids = np.flatnonzero(ok)
        lut = np.zeros(top + 1, dtype=dtype)
        lut[ids] = np.arange(1, len(ids) + 1, dtype=dtype)
        return lut[labels], ids.astype(np.int64), area[ids].astype(np.int64)
    # Sparse, huge ids (a look-up table would not fit): sort-based.
    if keep is not None:
        raise ValueError("keep is only supported for ids below 4 x the number of pixels")
    ids, inverse, area = np.unique(flat, return_inverse=True, return_counts=True)
    ok = (area >= min_size) & (ids > 0)
    new = np.where(ok, np.cumsum(ok), 0).astype(dtype)
    return new[inverse].reshape(labels.shape), ids[ok].astype(np.int64), area[ok].astype(np.int64)


def relabel(labels: np.ndarray, min_size: int = 0, keep: np.ndarray | None = None) -> np.ndarray:
    """:func:`compact`'s relabelled image alone (int32)."""
    return compact(labels, min_size, keep)[0]
