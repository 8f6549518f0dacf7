"""Real whole cells the project never trained on, scored with no parameter set.

    python benchmarks/real_wholecell.py --ctc DIR [--model NAME] [--json F]

DIR is the Cell Tracking Challenge's Fluo-C2DL-MSC training data in its own layout
(``01/tNNN.tif``, ``01_GT/SEG/man_segNNN.tif``, ``01_GT/TRA/man_trackNNN.tif``, and the
same for ``02``): rat mesenchymal stem cells, GFP filling the whole cell, large (about
75-160 px across), elongated, with thin processes, on a noisy background; 2-11 cells per
frame. The challenge's site holds it, and so does the ``Fluo-C2DL-MSC`` folder of
github.com/kaizen123/TrainingDataGenerator. Nothing is shipped here or downloaded: without
DIR the benchmark stops and says why. Its TIFFs are LZW-compressed (read through imagecodecs).

Only frames whose segmentation truth is complete are scored: as many SEG labels as the
frame's tracking markers (TRA); 18 of the 51 SEG frames annotate a few cells only, and
would count the others as false positives.

Reported per frame and pooled: AP@0.5 (TP / (TP + FP + FN)) with the defaults
(``pixel_size="auto"`` and the model chosen by look, what an image without a pixel size
gets), the pixel size estimated and the model chosen; and the same with the true cell size
given (the median equivalent diameter of the frame's true cells, ``cell_diameter_px``),
where the zoom it asks for is within the pipeline's bounds (1/8-8), else left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def frames(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, truth) of the frames whose SEG truth names every tracked cell."""
    import tifffile

    out = []
    for seq in ("01", "02"):
        for seg in sorted((folder / f"{seq}_GT" / "SEG").glob("man_seg*.tif")):
            t = seg.stem[len("man_seg"):]
            truth = tifffile.imread(seg)
            track = folder / f"{seq}_GT" / "TRA" / f"man_track{t}.tif"
            if not track.is_file():
                sys.exit(f"skipped: {track} not found: the TRA markers tell complete frames apart")
            if len(np.unique(truth)) != len(np.unique(tifffile.imread(track))):
                continue  # a partly annotated frame
            out.append((f"{seq}_t{t}", tifffile.imread(folder / seq / f"t{t}.tif"), truth.astype(np.int32)))
    return out


def median_diameter(labels: np.ndarray) -> float:
    areas = np.bincount(labels.ravel())[1:]
    return float(2 * np.sqrt(np.median(areas[areas > 0]) / np.pi))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctc", help="the Fluo-C2DL-MSC folder (01, 01_GT, 02, 02_GT)")
    ap.add_argument("--model", default=None, help="a model name or file (default: 'auto', chosen by look)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not args.ctc or not (Path(args.ctc) / "01_GT" / "SEG").is_dir():
        sys.exit("skipped: give --ctc DIR, the Cell Tracking Challenge's Fluo-C2DL-MSC folder "
                 "(with 01_GT/SEG and 01_GT/TRA); nothing is downloaded")
    import napari_cellseg as ncs

    rows, t0 = [], time.perf_counter()
    for name, image, truth in frames(Path(args.ctc)):
        row = {"frame": name, "cells": int(len(np.unique(truth)) - 1),
               "true_diameter_px": round(median_diameter(truth), 1)}
        for key, kwargs in (("defaults", {}), ("diameter_given", {"cell_diameter_px": row["true_diameter_px"]})):
            try:
                pred = ncs.predict(image.astype(np.float32), model=args.model, device="cpu", **kwargs)
            except ValueError as err:  # a diameter beyond the pipeline's zoom bounds
                row[key] = {"refused": str(err)[:100]}
                continue
            r = ncs.evaluate(truth, pred.segment())
            row[key] = {"ap": round(r.ap, 3), "tp": r.tp, "fp": r.fp, "fn": r.fn, "model": pred.model_name,
                        "pixel_size": None if pred.pixel_size is None else round(float(pred.pixel_size), 4)}
        rows.append(row)
        print(f"{name}  {row['cells']:2d} cells {row['true_diameter_px']:6.1f} px  "
              + "  ".join(f"{key.replace('_', ' ')} " + (
                  f"AP {v['ap']:.3f} (TP {v['tp']}, FP {v['fp']}, FN {v['fn']}; {v['model']}, {v['pixel_size']} µm)"
                  if "ap" in v else "refused (zoom out of bounds)")
                  for key, v in ((k, row[k]) for k in ("defaults", "diameter_given"))), flush=True)
    summary = {}
    for key in ("defaults", "diameter_given"):
        scored = [r[key] for r in rows if "ap" in r[key]]
        if not scored:
            summary[key] = {"frames": 0}
            continue
        tp, fp, fn = (sum(s[k] for s in scored) for k in ("tp", "fp", "fn"))
        summary[key] = {"frames": len(scored), "mAP": round(float(np.mean([s["ap"] for s in scored])), 3),
                        "pooled_ap": round(tp / max(tp + fp + fn, 1), 3), "fp": fp,
                        "frames_over_100_fp": sum(s["fp"] > 100 for s in scored)}
        print(f"{key}: {summary[key]}")
    print(f"({len(rows)} complete frames, {time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model or "auto", "summary": summary,
                                               "frames": rows}, indent=1))


if __name__ == "__main__":
    main()
