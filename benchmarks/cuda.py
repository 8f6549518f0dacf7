"""The CUDA path, measured for real on a GPU: inference speed and memory in float16 and
float32, agreement with the CPU, and training speed.

    python benchmarks/cuda.py --json cuda.json [--train-epochs 2]

Measures on one 1159 x 1040 dense T-cell frame (or the synthetic tissue generator at that
size when ../shared is absent; ``NAPARI_CELLSEG_SHARED`` points elsewhere):

- UNet inference alone (Mpx/s, best of ``--repeat``) in float16 autocast (the default on
  CUDA) and float32, with 4 and 16 tiles per pass, on the frame and on a 4 x 4 mosaic of it
  (19 Mpx), and the peak GPU memory of each (``torch.cuda.max_memory_allocated``);
- the whole default segmentation from the raw frame (Mpx/s);
- agreement with the CPU in float32: largest and mean difference of the probabilities,
  cells found, and AP@0.5 / AP50:95 of both label images against the frame's annotation;
- training: seconds per epoch (100 steps of 8 patches of 176 px, the shipped recipe's
  first step, then the validation band's segmentation) on CUDA in bfloat16 autocast and
  in float32, with the peak GPU memory.

Needs a CUDA GPU (exits with a sentence where there is none).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np


def best_of(fn, repeat: int, sync) -> tuple[object, float]:
    out, best = None, float("inf")
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--train-epochs", type=int, default=2, help="epochs timed per precision (0: no training)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to try this script out (figures meaningless)")
    args = ap.parse_args()

    import torch

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("skipped: PyTorch sees no CUDA GPU here")
    cuda = dev.startswith("cuda")
    from speed import frame

    import napari_cellseg as ncs
    from napari_cellseg.model.inference import predict_probabilities
    from napari_cellseg.model.registry import DEFAULT_MODEL
    from napari_cellseg.model.store import load_model

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def reset_peak():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib() -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")

    image, labels, source = frame()
    net, info = load_model()
    result: dict = {"source": source, "shape": list(image.shape), "model": DEFAULT_MODEL,
                    "gpu": torch.cuda.get_device_name(0) if cuda else "none",
                    "torch": torch.__version__, "cuda": torch.version.cuda, "inference": []}
    reps = (4, 4) if cuda else (1, 2)
    mosaic = np.tile(image, reps)
    predict_probabilities(net, image[:512, :512], device=dev)  # warm-up (cuDNN plans)
    for name, img in (("frame", image), (f"mosaic {reps[0]}x{reps[1]}", mosaic)):
        for half in (True, False):
            for batch in (4, 16):
                reset_peak()
                _, t = best_of(lambda img=img, half=half, batch=batch: predict_probabilities(
                    net, img, device=dev, half=half, batch_size=batch), args.repeat, sync)
                row = {"image": name, "mpx": img.size / 1e6, "precision": "float16" if half else "float32",
                       "tiles_per_pass": batch, "seconds": t, "mpx_per_s": img.size / 1e6 / t,
                       "peak_gpu_mib": peak_mib()}
                result["inference"].append(row)
                print(f"unet {name:10s} {row['precision']} x{batch:2d}: {row['mpx_per_s']:7.1f} Mpx/s "
                      f"({t:.3f} s), peak GPU {row['peak_gpu_mib']:.0f} MiB", flush=True)
    pred, t_all = best_of(lambda: ncs.predict(image, "model", model=(net, info), device=dev).segment(),
                          args.repeat, sync)
    result["segmentation_mpx_per_s"] = image.size / 1e6 / t_all
    result["segmentation_seconds"] = t_all
    print(f"whole segmentation on {dev}: {result['segmentation_mpx_per_s']:.2f} Mpx/s ({t_all:.2f} s)", flush=True)

    p_gpu = predict_probabilities(net, image, device=dev)
    p_cpu = predict_probabilities(net, image, device="cpu", half=False)
    pred_cpu = ncs.predict(image, "model", model=(net, info), device="cpu").segment()
    diff = np.abs(p_gpu - p_cpu)
    result["agreement"] = {"prob_max_abs_diff": float(diff.max()), "prob_mean_abs_diff": float(diff.mean()),
                           "cells_cuda": int(pred.max()), "cells_cpu": int(pred_cpu.max())}
    if labels is not None:
        for where, lab in (("cuda", pred), ("cpu", pred_cpu)):
            ev = ncs.evaluate(labels, lab)
            result["agreement"][f"ap50_{where}"] = ev.ap
            result["agreement"][f"ap50_95_{where}"] = ev.ap_50_95
    print("agreement with the CPU (float32):", result["agreement"], flush=True)

    if args.train_epochs and labels is not None:
        from napari_cellseg.model.train import TrainConfig
        from napari_cellseg.progress import drain
        from napari_cellseg.workflows.training import iter_train

        pairs = [("frame", image, labels)]
        result["training"] = []
        for precision in ("bf16", "fp32"):
            cfg = TrainConfig(epochs=args.train_epochs, steps_per_epoch=100, batch=8, lr=1e-3,
                              class_weights=(1.5, 1.0, 0.6), device=dev, precision=precision)
            reset_peak()
            in_use = []  # device memory held at the end of each epoch's steps: proof it trained there
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                gen = iter_train(pairs, f"{tmp}/m", config=cfg, val_band=(4, 5), synthetic=0, pixel_size=0.5)
                res = drain(gen, lambda p, in_use=in_use: p.unit == "steps" and p.done == p.total and in_use.append(
                    torch.cuda.memory_allocated() / 2**20 if cuda else float("nan")))
                total = time.perf_counter() - t
            per_epoch = [h["seconds"] for h in res.history]
            row = {"precision": precision, "epochs": args.train_epochs, "seconds_total": total,
                   "seconds_per_epoch": per_epoch, "gpu_mib_in_use_after_steps": in_use,
                   "peak_gpu_mib": peak_mib()}
            result["training"].append(row)
            print(f"training {precision}: {[round(v, 1) for v in per_epoch]} s per epoch (100 steps of 8 x "
                  f"176 px, then validation), peak GPU {row['peak_gpu_mib']:.0f} MiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
