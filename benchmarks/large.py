"""Block-wise segmentation of a synthetic slide on a dask LocalCluster: throughput and
peak memory against one whole frame, 1 vs 2 workers (CPU).

    python benchmarks/large.py [--size 4096] [--block 2048] [--halo 64] [--workers 1 2]
                               [--frame 2048 | --frame 0] [--dtype uint16]

The slide (``--size`` squared) is the shipped 512 px dense-tissue
sample mirrored over the slide, written to a zarr on disk tile by tile (the driver never
holds it). The single-frame baseline is
``napari_cellseg.segment`` on a ``--frame`` px crop (0: none), in a subprocess so that
its peak RSS is its own. Progress goes to stderr with the time; one JSON record is
printed at the end: seconds, Mpx/s, cells, peak RSS of every worker (their own
``ru_maxrss``), of the driver, and the issue's per-worker bound.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_slide(path: Path, size: int, dtype: str = "uint16") -> None:
    """The shipped 512 px dense-tissue sample (uint16, ~1,000 cells) mirrored over the
    slide, written to a zarr one tile at a time."""
    import tifffile
    import zarr

    from napari_cellseg.sample_data import shipped

    base = tifffile.imread(shipped("tissue.tif")).astype(dtype)
    tile = base.shape[0]
    arr = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(1024, 1024), dtype=dtype)
    for i in range(0, size, 1024):
        for j in range(0, size, 1024):
            block = np.zeros((1024, 1024), dtype)
            for a in range(0, 1024, tile):
                for b in range(0, 1024, tile):
                    ti, tj = (i + a) // tile, (j + b) // tile
                    block[a : a + tile, b : b + tile] = base[:: -1 if ti % 2 else 1, :: -1 if tj % 2 else 1]
            arr[i : i + 1024, j : j + 1024] = block[: min(1024, size - i), : min(1024, size - j)]


FRAME = """
import json, resource, sys, time, zarr
import napari_cellseg as nc
a = zarr.open_array(sys.argv[1], mode="r")[: int(sys.argv[2]), : int(sys.argv[2])]
t = time.perf_counter(); labels = nc.segment(a, "model", device="cpu"); dt = time.perf_counter() - t
print(json.dumps({"px": a.size, "seconds": dt, "cells": int(labels.max()),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--frame", type=int, default=2048, help="side of the single-frame baseline (0: none)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtype", default="uint16")
    ap.add_argument("--tmp", default=None, help="folder for the slide and outputs (default: the system's)")
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    from napari_cellseg.workflows.large import segment_large

    t_start = time.perf_counter()

    def show(p) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {p.text()}", file=sys.stderr, flush=True)

    record: dict = {"size": args.size, "block": args.block, "halo": args.halo, "dtype": args.dtype,
                    "cpu": cpu_model(), "cores": __import__("os").cpu_count()}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        slide = Path(tmp) / "slide.zarr"
        t = time.perf_counter()
        make_slide(slide, args.size, args.dtype)
        record["make_slide_s"] = round(time.perf_counter() - t, 1)
        if args.frame:
            side = min(args.frame, args.size)
            frame = json.loads(subprocess.run([sys.executable, "-c", FRAME, str(slide), str(side)],
                                              check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            frame["mpx_per_s"] = frame["px"] / 1e6 / frame["seconds"]
            record["single_frame"] = frame
        for n in args.workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
                t = time.perf_counter()
                result = segment_large(str(slide), Path(tmp) / f"out{n}.zarr", block=args.block,
                                       halo=args.halo, client=client, device="cpu", progress=show)
                dt = time.perf_counter() - t
                worker_rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            mpx_s = args.size**2 / 1e6 / dt
            entry = {
                "seconds": round(dt, 1), "cells": result.n_cells, "blocks": result.n_blocks,
                "mpx_per_s": round(mpx_s, 3), "healed_blocks": len(result.healed),
                "peak_rss_mib_per_worker": [round(v) for v in worker_rss.values()],
            }
            if args.frame:
                entry["vs_single_frame"] = round(mpx_s / record["single_frame"]["mpx_per_s"], 2)
            record[f"workers_{n}"] = entry
        record["driver_peak_rss_mib"] = round(peak_rss_mib())
        bound = 0.5 * 1024 + 150 * (args.block + 2 * args.halo) ** 2 / 2**20
        record["issue_bound_mib_per_worker"] = round(bound)
    print(json.dumps(record, indent=1, default=lambda v: np.asarray(v).tolist()))


if __name__ == "__main__":
    main()
