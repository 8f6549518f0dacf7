"""Validation accuracy on the held-out strips of the dense T-cell set.

    python benchmarks/accuracy_dense.py [--model NAME_OR_PATH] [--json FILE] [--trained]

Prints AP at IoU 0.5 per image and the mean (mAP) for the UNet pipeline with its default
parameters and for the classic baseline (smoothing, local threshold, intensity watershed).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _data import VAL_FRACTION, strips_trained_on, validation_strips


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--pixel-size", type=float, default=None,
                    help="µm per pixel given to the model (the set's is 0.5; default: none, the strips "
                         "taken to be at the model's own pixel size: give 0.5 for a model of another)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None,
                    help='parameter grid, e.g. "sensitivity=40,60,80;h=1,3;background=otsu3,probability"')
    ap.add_argument("--flips", action="store_true", help="test-time flip averaging")
    ap.add_argument("--trained", action="store_true",
                    help="score a strip of trained pixels (left edge) instead: under- or over-fitting?")
    args = ap.parse_args()

    import napari_cellseg as ncs
    from napari_cellseg.core.preprocess import percentile_normalize
    from napari_cellseg.model.store import load_model

    strips = validation_strips(trained=args.trained)
    model = load_model(args.model)
    # A model that held out less than these strips has trained on some of their pixels.
    extra = model[1].extra
    held = strips_trained_on(extra)
    if not args.trained and held:
        print(f"WARNING: this model held out {held}, not the right {VAL_FRACTION:.0%}: some of these "
              "strips were trained on, so the figures below are not validation figures")
    rows = []
    preds = {}
    for name, image, labels in strips:
        t0 = time.perf_counter()
        pred = ncs.predict(image, args.pixel_size, model=model, device="cpu", flips=args.flips)
        cells = pred.segment()
        dt = time.perf_counter() - t0
        preds[name] = (pred, labels)
        r = ncs.evaluate(labels, cells)
        norm = percentile_normalize(image)
        # The classic baseline at its best on these strips (a 30-setting grid: sigma 1.5-3.5,
        # Otsu / global / local thresholds, split distance 4-6 px).
        classic = ncs.segment_classic(norm, sigma=2.5, threshold=0.1, method="local", split="intensity",
                                      min_size=30, min_distance=6)
        rc = ncs.evaluate(labels, classic)
        rows.append({"image": name, "n_true": r.n_true, "unet_ap": r.ap, "unet_tp": r.tp,
                     "unet_fp": r.fp, "unet_fn": r.fn, "unet_sm": r.sm, "unet_ari": r.ari,
                     "classic_ap": rc.ap, "seconds": dt})
        print(f"{name:40s} cells {r.n_true:5d}  UNet AP {r.ap:.3f} (TP {r.tp} FP {r.fp} FN {r.fn})"
              f"  classic AP {rc.ap:.3f}  {dt:.1f}s", flush=True)
    pooled = sum(r["unet_tp"] for r in rows) / sum(r["unet_tp"] + r["unet_fp"] + r["unet_fn"] for r in rows)
    summary = {"unet_mAP": float(np.mean([r["unet_ap"] for r in rows])), "unet_pooled_AP": pooled,
               "classic_mAP": float(np.mean([r["classic_ap"] for r in rows])),
               "unet_mean_sm": float(np.mean([r["unet_sm"] for r in rows])),
               "unet_mean_ari": float(np.mean([r["unet_ari"] for r in rows]))}
    print(f"mAP@0.5 over {len(rows)} validation strips: UNet {summary['unet_mAP']:.3f} "
          f"(pooled AP {pooled:.3f}, SM {summary['unet_mean_sm']:.3f})  classic {summary['classic_mAP']:.3f}")
    if args.grid:
        import itertools

        axes = {}
        for part in args.grid.split(";"):
            key, values = part.split("=")
            axes[key.strip()] = [_value(v) for v in values.split(",")]
        for combo in itertools.product(*axes.values()):
            params = dict(zip(axes, combo, strict=True))
            res = [ncs.evaluate(lab, p.segment(**params)) for p, lab in preds.values()]
            m = np.mean([r.ap for r in res])
            pooled = sum(r.tp for r in res) / sum(r.tp + r.fp + r.fn for r in res)
            print(f"{params}  mAP {m:.3f}  pooled {pooled:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "images": rows}, f, indent=2)


def _value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


if __name__ == "__main__":
    main()
