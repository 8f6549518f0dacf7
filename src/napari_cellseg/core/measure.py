"""Per-cell measurements."""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

from .classic import classify_bright_dim

TABLE_COLUMNS = (
    "label", "area_px", "area_um2", "centroid_y", "centroid_x",
    "mean_intensity", "total_intensity", "bright",
)


def cell_table(
    labels: np.ndarray, image: np.ndarray | None = None, pixel_size: float | None = None
) -> pd.DataFrame:
    """One row per cell: label, area (px and µm²), centroid, mean and total intensity,
    and a bright/dim class (Otsu between the per-cell means).

    Parameters
    ----------
    labels : (M, N) ndarray of int
    image : (M, N) ndarray, optional
        Intensities; without it the intensity columns are NaN.
    pixel_size : float, optional
        µm per pixel; without it ``area_um2`` is NaN.

    Returns
    -------
    pandas.DataFrame
        Columns ``TABLE_COLUMNS``; centroids in pixels (row, column).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if image is not None and np.shape(image) != labels.shape:
        raise ValueError(f"image shape {np.shape(image)} differs from labels {labels.shape}")
    if labels.size == 0 or labels.max() == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in TABLE_COLUMNS})
    props = regionprops_table(labels.astype(np.int64), properties=("label", "area", "centroid"))
    df = pd.DataFrame({
        "label": props["label"].astype(np.int64),
        "area_px": props["area"].astype(np.int64),
        "area_um2": props["area"] * pixel_size**2 if pixel_size else np.nan,
        "centroid_y": props["centroid-0"],
        "centroid_x": props["centroid-1"],
    })
    if image is None:
        df["mean_intensity"] = np.nan
        df["total_intensity"] = np.nan
        df["bright"] = pd.array([pd.NA] * len(df), dtype="boolean")
        return df
    image = np.asarray(image, dtype=np.float64)
    total = np.bincount(labels.ravel(), weights=image.ravel())
    df["total_intensity"] = total[df["label"].to_numpy()]
    df["mean_intensity"] = df["total_intensity"] / df["area_px"]
    # classify_bright_dim wants ids 1..K: classify on the means directly.
    lab = np.zeros(labels.max() + 1, dtype=np.int64)
    lab[df["label"].to_numpy()] = np.arange(1, len(df) + 1)
    bright, _ = classify_bright_dim(image, lab[labels])
    df["bright"] = bright
    return df[list(TABLE_COLUMNS)]
