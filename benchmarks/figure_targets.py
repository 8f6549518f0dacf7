"""The 3-class training targets drawn on a crop of a real dense T-cell image.

    python benchmarks/figure_targets.py --out docs/targets.png

Left: the image (red channel); middle: the expert's cell outlines; right: the targets
(seed magenta, cytoplasm green, background black, with the one-pixel line between
touching cells as background).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/targets.png")
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()

    import imageio.v3 as iio
    from _data import dense_or_exit
    from skimage.segmentation import find_boundaries

    from napari_cellseg.core.preprocess import percentile_normalize
    from napari_cellseg.io import load_pairs
    from napari_cellseg.model.targets import CYTOPLASM, SEED, make_targets

    folder = dense_or_exit()
    _, image, labels = load_pairs(folder, folder)[0]
    r, c, s = 430, 420, args.size
    img = np.clip(percentile_normalize(image), 0, 1)[r : r + s, c : c + s]
    lab = labels[r : r + s, c : c + s]
    t = make_targets(labels)[r : r + s, c : c + s]
    grey = np.stack([img] * 3, -1)
    outl = grey.copy()
    outl[find_boundaries(lab, mode="inner")] = (1.0, 1.0, 0.0)
    tg = np.zeros_like(grey)
    tg[t == SEED] = (1.0, 0.0, 1.0)
    tg[t == CYTOPLASM] = (0.0, 0.8, 0.0)
    gap = np.ones((s, 4, 3))
    panel = np.concatenate([grey, gap, outl, gap, tg], axis=1)
    panel = np.kron(panel, np.ones((4, 4, 1)))
    iio.imwrite(args.out, (panel * 255).astype(np.uint8))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
