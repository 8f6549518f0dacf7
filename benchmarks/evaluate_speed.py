"""Metric evaluation speed on one core: a 1040 x 1159 pair with ~2,000 cells each.

    python benchmarks/evaluate_speed.py

Ground truth: a dense T-cell mask (or a synthetic one without ../shared); prediction:
the same mask shifted by 2 px with ids permuted, so that every cell has a partner.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def main() -> None:
    from _data import DENSE

    from napari_cellseg.core.metrics import evaluate

    if DENSE.is_dir():
        from napari_cellseg.io import read_labels

        gt = read_labels(sorted(DENSE.glob("*Position10*_masks.png"))[0])
    else:
        from napari_cellseg.core.synthetic import make_whole_cell_image

        gt = make_whole_cell_image(seed=1, shape=(1040, 1159), cell_radius=7.5, density=0.9).labels
    perm = np.random.default_rng(0).permutation(int(gt.max()) + 1)
    perm[0] = 0
    pred = perm[np.roll(gt, 2, axis=1)]
    evaluate(gt, pred)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        r = evaluate(gt, pred)
        times.append(time.perf_counter() - t)
    print(f"pair {gt.shape}, {r.n_true} / {r.n_pred} cells: evaluate {min(times):.3f} s (best of 5), "
          f"median {sorted(times)[2]:.3f} s; AP {r.ap:.3f}")


if __name__ == "__main__":
    main()
