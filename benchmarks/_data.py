"""Shared by the benchmarks: the dense T-cell set's validation strips, read from ../shared."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("NAPARI_CELLSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DENSE = SHARED / "data" / "dense_tcells" / "train"
VAL_FRACTION = 0.2  # the right-hand 20 % of each training portion; the model never saw it


def strips_trained_on(extra: dict) -> str | None:
    """Why a model's figures on the validation strips would not be validation figures
    (it held out less than those strips), or None when it held them out."""
    band = extra.get("val_band")
    if band:
        return None if band == [band[1] - 1, band[1]] else f"band {band[0] + 1} of {band[1]}"
    fraction = extra.get("val_fraction", VAL_FRACTION)
    return None if fraction >= VAL_FRACTION else f"val_fraction {fraction}"


def dense_or_exit() -> Path:
    if not DENSE.is_dir():
        sys.exit(f"skipped: the dense T-cell set is not at {DENSE} "
                 "(set NAPARI_CELLSEG_SHARED to the folder holding data/dense_tcells)")
    return DENSE


def validation_strips(fraction: float = VAL_FRACTION, trained: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, raw image strip, label strip) for each image: the columns the training
    command holds out with the same fraction. ``trained``: a strip of the same width from
    the left edge instead (pixels the model was trained on), to tell under- from
    over-fitting."""
    from napari_cellseg.io import load_pairs

    out = []
    for stem, image, labels in load_pairs(dense_or_exit(), DENSE):
        width = image.shape[1] - round(image.shape[1] * (1 - fraction))
        sl = np.s_[:, :width] if trained else np.s_[:, image.shape[1] - width:]
        out.append((stem, image[sl], labels[sl]))
    return out
