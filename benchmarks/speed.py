"""Speed and memory on one 1159 x 1040 frame (CPU unless --device says otherwise).

    python benchmarks/speed.py [--threads 2] [--device cpu] [--repeat 3] [--model M --pixel-size 0.5]
                               [--image FILE]

Measures: UNet inference alone (Mpx/s), the whole default segmentation from the raw
image (Mpx/s), the automatic scale estimate (s, and its share of the segmentation's time;
``pixel_size="auto"`` adds it), the choice of model by look (s, and its share; without
``--model`` it runs on every image, choose.py), re-segmentation latency after an h or a sensitivity change (ms), metric
evaluation of a 1040 x 1159 pair with ~2,000 cells each (s), and peak memory (RSS, MiB;
peak GPU memory on CUDA). With neither ``--model`` nor ``--pixel-size``, also what a user
who sets nothing waits for: the segmentation with the scale estimated and the model
chosen, against the same segmentation given the pixel size and the model they found (the
estimate and the choice share network passes, so their own times above overstate it). On a CPU with native bfloat16 the UNet runs in it;
``NAPARI_CELLSEG_CPU_BF16=0`` measures float32. Uses a real dense T-cell frame when
../shared has it, else the synthetic tissue generator at the same size; ``--image`` another
image (no truth, no evaluation).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np


def frame(path: str | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    if path:
        from napari_cellseg.io import read_image

        return read_image(path), None, path
    from _data import DENSE

    if DENSE.is_dir():
        from napari_cellseg.io import load_pairs

        stem, image, labels = load_pairs(DENSE, DENSE)[0]
        return image, labels, f"dense T-cell frame {stem}"
    from napari_cellseg.core.synthetic import make_whole_cell_image

    s = make_whole_cell_image(seed=1, shape=(1040, 1159), cell_radius=7.5, density=0.8, stain="membrane")
    return s.image, s.labels, "synthetic tissue (no ../shared)"


def timed(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default=None, help="a shipped model's name or a weight file (default: the default model)")
    ap.add_argument("--pixel-size", type=float, default=None,
                    help="µm per pixel of the frame, given to the model (the dense set's is 0.5; default: none)")
    ap.add_argument("--image", default=None, help="an image file instead of the dense frame")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    import napari_cellseg as ncs
    from napari_cellseg.model.inference import cpu_bf16, predict_probabilities
    from napari_cellseg.model.store import load_model

    torch.set_num_threads(args.threads)
    image, labels, source = frame(args.image)
    mpx = image.size / 1e6
    net, info = load_model(args.model)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    predict_probabilities(net, image[:256, :256], device=args.device)  # warm-up
    _, t_net, _t_net_med = timed(lambda: predict_probabilities(net, image, device=args.device), args.repeat)
    px = args.pixel_size
    pred, t_all, _t_all_med = timed(
        lambda: ncs.predict(image, px, model=(net, info), device=args.device).segment(), args.repeat)
    from napari_cellseg.scale import estimate_scale

    _, t_scale, _ = timed(lambda: estimate_scale(image.astype(np.float32), net, info, args.device), args.repeat)
    t_choice = None
    if args.model is None:  # no model named: the choice by look runs too (choose.py)
        from napari_cellseg.choose import choose_model

        choose_model(image, 1.0, args.device)  # both models loaded
        _, t_choice, _ = timed(lambda: choose_model(image, 1.0, args.device), args.repeat)
    nothing_set = {}
    if args.model is None and px is None:
        auto = ncs.predict(image, "auto", None, args.device)
        _, t_auto, _ = timed(lambda: ncs.predict(image, "auto", None, args.device).segment(), args.repeat)
        found = auto.pixel_size, auto.model_name
        _, t_found, _ = timed(lambda: ncs.predict(image, *found, args.device).segment(), args.repeat)
        nothing_set = {"nothing_set_seconds": t_auto, "chosen_model": found[1],
                       "estimated_pixel_size": found[0], "given_what_it_found_seconds": t_found,
                       "scale_and_choice_share": (t_auto - t_found) / t_found}
    prediction = ncs.predict(image, px, model=(net, info), device=args.device)
    prediction.warm()
    prediction.segment()
    lat_h, lat_s = [], []
    for i in range(20):
        t = time.perf_counter()
        prediction.segment(h_probability=0.05 + 0.025 * (i % 10))  # the default split's h
        lat_h.append(time.perf_counter() - t)
        t = time.perf_counter()
        prediction.segment(sensitivity=float(20 * (i % 5) + 20))
        lat_s.append(time.perf_counter() - t)
    result = {
        "source": source, "shape": list(image.shape), "device": args.device, "threads": args.threads,
        "model": args.model or "default", "pixel_size": px,
        "cpu_bfloat16": args.device == "cpu" and cpu_bf16(),
        "unet_mpx_per_s": mpx / t_net, "unet_seconds": t_net,
        "segmentation_mpx_per_s": mpx / t_all, "segmentation_seconds": t_all,
        "auto_scale_seconds": t_scale, "auto_scale_share_of_segmentation": t_scale / t_all,
        **({"model_choice_seconds": t_choice, "model_choice_share_of_segmentation": t_choice / t_all}
           if t_choice is not None else {}),
        **nothing_set,
        "resegment_h_ms_median": 1e3 * statistics.median(lat_h), "resegment_h_ms_max": 1e3 * max(lat_h),
        "resegment_sensitivity_ms_median": 1e3 * statistics.median(lat_s),
        "resegment_sensitivity_ms_max": 1e3 * max(lat_s),
        "cells": int(pred.max()),
    }
    if labels is not None:
        ncs.evaluate(labels, pred)
        _, t_eval, _ = timed(lambda: ncs.evaluate(labels, pred), args.repeat)
        result["evaluate_seconds"] = t_eval
        result["evaluate_cells"] = [int(len(np.unique(labels)) - 1), int(pred.max())]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    for k, v in result.items():
        print(f"{k:34s} {v:.3f}" if isinstance(v, float) else f"{k:34s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
