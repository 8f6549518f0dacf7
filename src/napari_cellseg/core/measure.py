"""Per-cell measurements."""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

from . import validate
from .classic import two_class_cutoff
from .labels import compact

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
        Intensities; without it the intensity columns are NaN. NaN pixels (a saturated or
        masked pixel in a float image) are left out of a cell's mean and total; a cell
        with no finite pixel gets NaN and no bright/dim class.
    pixel_size : float, optional
        µm per pixel; without it ``area_um2`` is NaN.

    Returns
    -------
    pandas.DataFrame
        Columns ``TABLE_COLUMNS``; centroids in pixels (row, column).
    """
    labels = validate.label_image(labels)
    if image is not None:
        image = np.asarray(image)
        if image.shape != labels.shape:
            raise ValueError(f"image shape {image.shape} differs from labels {labels.shape}")
        validate.real_pixels(image.dtype)
    pixel_size = validate.optional_pixel_size(pixel_size)  # None or 0: unknown, area_um2 NaN
    # Ids 1..K whatever the original ids (huge or sparse ids need no K-sized arrays).
    dense, ids, areas = compact(labels)
    if len(ids) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in TABLE_COLUMNS})
    props = regionprops_table(dense, properties=("label", "centroid"))
    df = pd.DataFrame({
        "label": ids,
        "area_px": areas,
        "area_um2": areas * pixel_size**2 if pixel_size else np.nan,
        "centroid_y": props["centroid-0"],
        "centroid_x": props["centroid-1"],
    })
    if image is None:
        df["mean_intensity"] = np.nan
        df["total_intensity"] = np.nan
        df["bright"] = pd.array([pd.NA] * len(df), dtype="boolean")
        return df
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image)
    flat, k = dense.ravel(), len(ids) + 1
    total = np.bincount(flat, weights=np.where(finite, image, 0.0).ravel(), minlength=k)[1:]
    counted = np.bincount(flat, weights=finite.ravel(), minlength=k)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counted > 0, total / counted, np.nan)
    df["total_intensity"] = np.where(counted > 0, total, np.nan)
    df["mean_intensity"] = mean
    # Otsu between the cells' means (as classic.classify_bright_dim), over the cells that have one.
    measured = np.isfinite(mean)
    cutoff = two_class_cutoff(mean[measured]) if measured.any() else np.nan
    df["bright"] = pd.array([bool(m > cutoff) if ok else pd.NA for m, ok in zip(mean, measured, strict=True)],
                            dtype="boolean")
    return df[list(TABLE_COLUMNS)]
