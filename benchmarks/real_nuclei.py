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

``--more DIR`` adds three sets of real nuclear images with truth, with the defaults only,
from a checkout of github.com/datascience-mobi-2022/2022-topic-01-team-04 (its
``data/Otsu_data``; nothing of it is shipped here): 4 frames of HeLa H2B-GFP and 6 of
GOWT1 GFP (the Cell Tracking Challenge's N2DL-HeLa and N2DH-GOWT1 with their manual
segmentations, instance labels) and 18 of NIH3T3 in Hoechst (Coelho et al. 2009; the
truth there is a binary mask, so its connected components stand for the nuclei and
touching nuclei count as one).

    python benchmarks/real_nuclei.py --stardist DIR --more DIR2 --model multiscale_nuclei

``--same-scale`` also scores each ``--more`` set as one batch of files with one scale
(``batch.iter_segment_files(..., same_scale=True)``, the CLI's ``--same-scale``): each set
is one experiment's frames.
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
                 "repository, which holds the image), and/or --more DIR; nothing is downloaded")
    missing = [str(p) for p in pair if not p.is_file()]
    if missing:
        sys.exit(f"skipped: not found: {', '.join(missing)}")
    return pair


def area_ratio(result) -> float | None:
    """The median area of the matched predicted nuclei over their true ones (None: no match)."""
    matched = result.per_true[result.per_true["matched"]]
    if not len(matched):
        return None
    area = result.per_pred.set_index("label")["area"].loc[matched["matched_label"]].to_numpy()
    return float(np.median(area / matched["area"].to_numpy()))


def score(image: np.ndarray, mask: np.ndarray, pixel_size, model) -> dict:
    import napari_cellseg as ncs

    t0 = time.perf_counter()
    pred = ncs.predict(image, pixel_size, model, "cpu")
    r = ncs.evaluate(mask, pred.segment())
    ratio = area_ratio(r)
    return {"pixel_size": pixel_size if not isinstance(pixel_size, str) else
            (round(float(pred.pixel_size), 3) if pred.pixel_size else pixel_size),
            "ap": round(r.ap, 3), "tp": r.tp, "fp": r.fp, "fn": r.fn, "n_pred": r.n_pred,
            "matched_area_ratio": None if ratio is None else round(ratio, 2),
            "model": pred.model_name, "seconds": round(time.perf_counter() - t0, 1)}


def more_sets(folder: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The three sets of ``--more`` (see the module's docstring), as (image, labels) pairs."""
    import imageio.v3 as iio
    from PIL import Image  # the CTC files are LZW-compressed TIFFs, which Pillow decodes
    from skimage.measure import label

    root = folder / "data" / "Otsu_data"
    if not root.is_dir():
        sys.exit(f"skipped: no data/Otsu_data under {folder}")

    def tif(path: Path) -> np.ndarray:
        return np.array(Image.open(path))

    def ctc(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for gt in sorted((root / name / "gt").glob("man_seg*.tif")):
            image = root / name / "img" / f"t{gt.stem[len('man_seg'):]}.tif"
            if image.is_file():  # a truth without its frame is left out
                out.append((tif(image), tif(gt).astype(np.int32)))
        return out

    nih = [(iio.imread(root / "NIH3T3" / "img" / f"dna-{gt.stem}.png"), label(iio.imread(gt) > 0).astype(np.int32))
           for gt in sorted((root / "NIH3T3" / "gt").glob("*.png"), key=lambda q: int(q.stem))]
    return {"HeLa (CTC N2DL-HeLa, H2B-GFP)": ctc("N2DL-HeLa"), "GOWT1 (CTC N2DH-GOWT1, GFP)": ctc("N2DH-GOWT1"),
            "NIH3T3 (Hoechst; binary truth)": nih}


def score_set(pairs, model) -> dict:
    """Defaults on every image of a set: mean AP, pooled AP, the matched nuclei's median
    area over the truth's (per image, then the median), the estimated pixel sizes."""
    import napari_cellseg as ncs

    aps, counts, ratios, sizes, chosen = [], np.zeros(3, int), [], [], []
    for image, labels in pairs:
        pred = ncs.predict(image, "auto", model, "cpu")
        r = ncs.evaluate(labels, pred.segment())
        aps.append(r.ap)
        counts += (r.tp, r.fp, r.fn)
        sizes.append(round(float(pred.pixel_size), 3) if pred.pixel_size else None)
        chosen.append(pred.model_name)
        if (ratio := area_ratio(r)) is not None:
            ratios.append(ratio)
    return {"images": len(pairs), "nuclei": int(sum(len(np.unique(lab)) - 1 for _, lab in pairs)),
            "mAP": round(float(np.mean(aps)), 3), "pooled": round(float(counts[0] / max(counts.sum(), 1)), 3),
            "matched_area_ratio": round(float(np.median(ratios)), 2) if ratios else None,
            "estimated_px_um": sizes, "models": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image")
    ap.add_argument("--mask")
    ap.add_argument("--stardist", help="a checkout of the StarDist repository")
    ap.add_argument("--more", help="a checkout of datascience-mobi-2022/2022-topic-01-team-04: three more sets")
    ap.add_argument("--model", default=None,
                    help="a model name or file (default: 'auto', the model chosen per image by its look)")
    ap.add_argument("--same-scale", action="store_true",
                    help="also score each --more set as one batch with one scale (same_scale)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    # The DSB image unless only --more was given.
    image_path, mask_path = locate(args) if args.image or args.stardist or not args.more else (None, None)

    import tifffile

    from napari_cellseg.model.store import resolve_model

    model = args.model  # None: chosen per image (choose.py); a named one is loaded once
    if model is not None:
        resolve_model(model)  # a missing or corrupt model fails now
    rows = {}
    if image_path is not None:
        image, mask = tifffile.imread(image_path), tifffile.imread(mask_path).astype(np.int32)
        print(f"{image_path.name}: {image.shape} {image.dtype}, {len(np.unique(mask)) - 1} nuclei; "
              f"model {args.model or 'auto'}", flush=True)
        for label, px in [("auto (defaults)", "auto"), ("model", "model"), *((f"{p:g} µm", p) for p in PIXEL_SIZES)]:
            rows[label] = score(image, mask, px, model)
            print(f"{label:16s} {rows[label]}", flush=True)
    sets = {}
    if args.more:
        for name, pairs in more_sets(Path(args.more)).items():
            sets[name] = score_set(pairs, model)
            print(f"{name:32s} {sets[name]}", flush=True)
            if args.same_scale:
                sys.path.insert(0, str(Path(__file__).parent))
                from generalization import score_batch

                batch = score_batch([(f"{k:03d}", image, labels) for k, (image, labels) in enumerate(pairs)], model)
                sets[name]["one_scale"] = batch
                print(f"{'  one scale for the set':32s} {batch}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"image": image_path and str(image_path), "model": args.model,
                                               "rows": rows, "sets": sets}, indent=2))


if __name__ == "__main__":
    main()
