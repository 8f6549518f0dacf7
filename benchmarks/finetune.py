"""The five-minute fine-tune: AP@0.5 before and after fine-tuning a built-in model (--model; default: the default model, as the Train widget) on ONE
annotated crop, with the Train widget's settings, on the CPU.

    python benchmarks/finetune.py [--model NAME] [--minutes 5] [--cases tissue,nuclei,whole_cell,membrane,dense] [--json F]

For each case the model is fine-tuned on one 256 x 256 crop with its exact (synthetic) or
expert (dense) labels, exactly as the Train widget does it (``_widgets/train.py``: start
from the shipped model, only the annotated region of the crop (its labelled box + 16 px),
40 epochs x 20 steps x batch 8, lr 1e-4 with the batch-norm statistics frozen (until
2026-11-23: lr 3e-4, free; ``--lr 3e-4 --no-freeze-norm``), the right 20 % of the region
for validation, the starting model scored there first, the best epoch kept if one beats
it, the time budget), and both models segment the same held-out images with no parameter
set (no pixel size: the image taken at the model's own; the fine-tuned
model carries the crop's measured cell diameter):

* synthetic looks (``generalization.synthetic_case`` at 1x): the crop is a fresh image
  (seed 900), the test images are the benchmark's three (seeds 500-502). ``tissue`` and
  ``nuclei`` were never in the shipped model's training; ``whole_cell`` and ``membrane``
  were mixed into it.
* ``dense``: the dense set's validation strips (band 5, the right 20 % of each portion,
  which the shipped model never trained on). The crop is the top 256 rows of image 1's
  strip; the test is every other strip plus the rest of image 1's below the crop.

Figures: mAP over the test images, pooled AP, training seconds and epochs, and whether the
time budget stopped it. Time it on a quiet machine: the budget is wall-clock.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from generalization import score, synthetic_case

CROP = 256


def case_data(case: str):
    """(crop image, crop labels, test pairs)."""
    if case == "dense":
        from _data import validation_strips

        strips = validation_strips()
        name, image, labels = strips[0]
        crop = (image[:CROP].astype(np.float32), labels[:CROP])
        # The test part starts below every cell the crop cuts: their top halves are trained
        # on, so their bottom halves must not be scored (8 cells of 1,145 before 2026-11-24).
        cut = np.unique(labels[CROP - 1])
        rows = np.flatnonzero(np.isin(labels, cut[cut > 0]).any(axis=1))
        start = int(rows.max()) + 1 if rows.size else CROP
        test = [(f"{name}[{start}:]", image[start:].astype(np.float32), labels[start:].copy())]
        test += [(n, i.astype(np.float32), lab) for n, i, lab in strips[1:]]
        return (*crop, test)
    crop = synthetic_case(case, 1.0, n=1, first_seed=900)[0]
    return crop[1], crop[2], synthetic_case(case, 1.0)


def fine_tune(image, labels, minutes: float, out: Path, lr: float = 1e-4, freeze_norm: bool = True,
              init: str = "dense_tcells"):
    """The Train widget's fine-tune of ``init`` (same settings unless ``lr`` / ``freeze_norm``
    differ), saving to ``out``."""
    from napari_cellseg.model.train import TrainConfig
    from napari_cellseg.progress import drain
    from napari_cellseg.workflows.training import annotated_region, iter_train

    rows, cols = annotated_region(labels)
    cfg = TrainConfig(epochs=40, steps_per_epoch=20, batch=8, lr=lr, time_budget_s=60.0 * minutes,
                      freeze_norm=freeze_norm)
    t0 = time.perf_counter()
    result = drain(iter_train([("crop", image[rows, cols], labels[rows, cols])], out, init=init,
                              config=cfg, val_fraction=0.2, keep_best=True))
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from napari_cellseg.model.registry import DEFAULT_MODEL

    ap.add_argument("--model", default=DEFAULT_MODEL, help="the built-in model to start from (default: the default model)")
    ap.add_argument("--minutes", type=float, default=5.0, help="the time budget (the widget's default: 5)")
    ap.add_argument("--cases", default="tissue,nuclei,whole_cell,membrane,dense")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate (the widget's: 1e-4)")
    ap.add_argument("--freeze-norm", action=argparse.BooleanOptionalAction, default=True,
                    help="batch-norm statistics frozen at the start model's (the widget's: yes)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_cellseg.model.store import resolve_model

    start = resolve_model(args.model)  # the model fine-tuned (--model)
    from _data import strips_trained_on

    held = strips_trained_on(start[1].extra)
    if held and "dense" in args.cases.split(","):
        print(f"WARNING: this model held out {held}, not the dense set's right 20 %: the 'dense' case "
              "scores pixels it was trained on", flush=True)
    report = {"model": args.model, "minutes": args.minutes, "torch_threads": torch.get_num_threads(), "lr": args.lr,
              "freeze_norm": args.freeze_norm, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            image, labels, test = case_data(case)
            before = score(test, start, None)
            result, seconds = fine_tune(image, labels, args.minutes, Path(tmp) / f"{case}.safetensors",
                                        lr=args.lr, freeze_norm=args.freeze_norm, init=args.model)
            after = score(test, result.path, None)
            last = result.history[-1]
            row = {"before": before, "after": after, "train_s": round(seconds, 1), "epochs": last["epoch"],
                   "stopped": last.get("stopped"), "crop_cells": int(len(np.unique(labels)) - 1),
                   "cell_diameter_um": round(result.info.cell_diameter_um, 2),
                   "start_val_mAP": result.info.extra.get("start_val_mAP"),
                   "kept_epoch": result.info.extra.get("kept_epoch"),
                   "val_mAP": [round(r["val_mAP"], 3) for r in result.history if "val_mAP" in r]}
            report["cases"][case] = row
            print(f"{case:10s} before {before['mAP']:.3f} / {before['pooled']:.3f}  after {after['mAP']:.3f} / "
                  f"{after['pooled']:.3f}  ({row['crop_cells']} cells in the crop, {seconds:.0f} s, "
                  f"{row['epochs']} epochs, kept epoch {row['kept_epoch']}, {before['cells']} test cells)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
