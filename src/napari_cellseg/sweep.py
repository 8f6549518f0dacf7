"""Noise sweep of the classic pipeline: where does counting start to fail?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .core.classic import segment_classic
from .core.synthetic import N_CELLS, SEED, make_image

NOISE_LEVELS = (0.05, 0.10, 0.15, 0.20, 0.25)


def noise_sweep(
    levels: tuple[float, ...] = NOISE_LEVELS, n_images: int = 50, seed: int = SEED, **classic_kwargs
) -> tuple[pd.DataFrame, float | None]:
    """Count cells in ``n_images`` lesson images per noise level.

    Returns a table (noise, mean, sd, min, max, share of images with exactly 8 cells)
    and the first level at which fewer than 95 % of the images give the exact count
    (None when every level passes).
    """
    rows = []
    for level in levels:
        counts = np.array([
            int(segment_classic(make_image(seed=seed + i, noise_scale=level)[0], **classic_kwargs).max())
            for i in range(n_images)
        ])
        rows.append({"noise": level, "mean_count": counts.mean(), "sd_count": counts.std(ddof=1) if n_images > 1 else 0.0,
                     "min_count": int(counts.min()), "max_count": int(counts.max()),
                     "exact_share": float(np.mean(counts == N_CELLS))})
    df = pd.DataFrame(rows)
    failing = df.loc[df["exact_share"] < 0.95, "noise"]
    return df, (float(failing.iloc[0]) if len(failing) else None)


def plot_sweep(df: pd.DataFrame, failing: float | None, path: str | Path) -> Path:
    """Mean +- sd of the count against noise, with the true count and the failure level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.errorbar(df["noise"], df["mean_count"], yerr=df["sd_count"], marker="o", capsize=4,
                label="classic pipeline (mean ± sd)")
    ax.axhline(N_CELLS, color="grey", ls="--", label=f"true count ({N_CELLS})")
    if failing is not None:
        ax.axvline(failing, color="tab:red", ls=":", label=f"starts to fail ({failing:.2f})")
    ax.set_xlabel("noise scale (sd of Gaussian noise)")
    ax.set_ylabel("cells counted")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
