"""A real nuclear image the project never trained on, scored with no parameter set.

    python benchmarks/real_nuclei.py --image IMG.tif --mask MASK.tif [--model NAME] [--json F]
    python benchmarks/real_nuclei.py --stardist DIR      # a checkout of github.com/stardist/stardist

Issue 15's unseen real image: a fluorescence image of nuclei from the 2018 Data Science
Bowl (Caicedo et al., Nature Methods 2019) with its expert masks, 512 x 512, 125 nuclei
about 24 px across. The StarDist project ships it as its 2-D test image
(``stardist/data/images/img2d.tif`` and ``mask2d.tif``; ``stardist.data
.test_image_nuclei_2d``). It is not shipped here and nothing is downloaded: give the two
files, or a StarDist checkout, or the benchmark stops and says why.

Reported: AP@0.5 (TP / (TP + FP + FN)) with the defaults (``pixel_size="auto"``, what an
image without a pixel size gets), the estimated pixel size, the same at the model's scale
(``"model"``) and over a row of pixel sizes given by hand; and, per row, the median area of
the matched predicted nuclei over their true ones (above 1: drawn wider than the expert's
outline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PIXEL_SIZES = (0.25, 0.3, 0.35, 0.4, 0.5)  # µm per pixel given by hand (the model's: 0.5)


def locate(args) -> tuple[Path, Path]:
    if args.image and args.mask:
        pair = Path(args.image), Path(args.mask)
    elif args.stardist:
        images = Path(args.stardist) / "stardist" / "data" / "images"
        pair = images / "img2d.tif", images / "mask2d.tif"
    else:
        sys.exit("skipped: give --image and --mask, or --stardist DIR (a checkout of the StarDist "
                 "repository, which holds the image); nothing is downloaded")
    missing = [str(p) for p in pair if not p.is_file()]
    if missing:
        sys.exit(f"skipped: not found: {', '.join(missing)}")
    return pair


def score(image: np.ndarray, mask: np.ndarray, pixel_size, model) -> dict:
    import napari_cellseg as ncs

    t0 = time.perf_counter()
    pred = ncs.predict(image, pixel_size, model, "cpu")
    r = ncs.evaluate(mask, pred.segment())
    matched = r.per_true[r.per_true["matched"]]
    pred_area = r.per_pred.set_index("label")["area"]
    ratio = pred_area.loc[matched["matched_label"]].to_numpy() / matched["area"].to_numpy()
    return {"pixel_size": pixel_size if not isinstance(pixel_size, str) else
            (round(float(pred.pixel_size), 3) if pred.pixel_size else pixel_size),
            "ap": round(r.ap, 3), "tp": r.tp, "fp": r.fp, "fn": r.fn, "n_pred": r.n_pred,
            "matched_area_ratio": round(float(np.median(ratio)), 2) if len(ratio) else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image")
    ap.add_argument("--mask")
    ap.add_argument("--stardist", help="a checkout of the StarDist repository")
    ap.add_argument("--model", default=None, help="a model name or file (default: the default model)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    image_path, mask_path = locate(args)

    import tifffile

    from napari_cellseg.model.store import resolve_model

    image, mask = tifffile.imread(image_path), tifffile.imread(mask_path).astype(np.int32)
    model = resolve_model(args.model)
    print(f"{image_path.name}: {image.shape} {image.dtype}, {len(np.unique(mask)) - 1} nuclei; "
          f"model {args.model or 'default'}", flush=True)
    rows = {}
    for label, px in [("auto (defaults)", "auto"), ("model", "model"), *((f"{p:g} µm", p) for p in PIXEL_SIZES)]:
        rows[label] = score(image, mask, px, model)
        print(f"{label:16s} {rows[label]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"image": str(image_path), "model": args.model,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
