"""Block-wise segmentation of a synthetic slide on a dask LocalCluster: throughput and
peak memory against one whole frame, 1 vs 2 workers (CPU).

    python benchmarks/large.py [--size 4096] [--block 2048] [--halo 64] [--workers 1 2]

The slide (``--size`` squared, up to 16k on a bigger machine) is a 1024 px synthetic tissue
tile mirrored over the slide, written to a zarr on disk block by block (the driver never
holds it). The single-frame baseline is ``napari_cellseg.segment`` on the whole slide (on
a ``--frame`` px crop when the slide is larger), in a subprocess so that its peak RSS is
its own. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_slide(path: Path, size: int, tile: int = 1024) -> None:
    import zarr

    from napari_cellseg.core.synthetic import make_whole_cell_image

    base = make_whole_cell_image(seed=1, shape=(tile, tile), cell_radius=7.5, density=0.8,
                                 stain="membrane").image
    arr = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(tile, tile), dtype="float32")
    for i in range(0, size, tile):
        for j in range(0, size, tile):
            t = base[:: -1 if (i // tile) % 2 else 1, :: -1 if (j // tile) % 2 else 1]
            arr[i : i + tile, j : j + tile] = t[: min(tile, size - i), : min(tile, size - j)]


FRAME = """
import json, resource, sys, time, zarr
import napari_cellseg as nc
a = zarr.open_array(sys.argv[1], mode="r")[: int(sys.argv[2]), : int(sys.argv[2])]
t = time.perf_counter(); labels = nc.segment(a, device="cpu"); dt = time.perf_counter() - t
print(json.dumps({"px": a.size, "seconds": dt, "cells": int(labels.max()),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--frame", type=int, default=4096, help="side of the single-frame baseline")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    from napari_cellseg.workflows.large import segment_large

    record: dict = {"size": args.size, "block": args.block, "halo": args.halo}
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.zarr"
        t = time.perf_counter()
        make_slide(slide, args.size)
        record["make_slide_s"] = round(time.perf_counter() - t, 1)
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
                                       halo=args.halo, client=client, device="cpu")
                dt = time.perf_counter() - t
                worker_rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            mpx_s = args.size**2 / 1e6 / dt
            record[f"workers_{n}"] = {
                "seconds": round(dt, 1), "cells": result.n_cells, "mpx_per_s": round(mpx_s, 3),
                "vs_single_frame": round(mpx_s / frame["mpx_per_s"], 2),
                "healed_blocks": len(result.healed),
                "peak_rss_mib_per_worker": [round(v) for v in worker_rss.values()],
            }
        record["driver_peak_rss_mib"] = round(peak_rss_mib())
        bound = 0.5 * 1024 + 150 * (args.block + 2 * args.halo) ** 2 / 2**20
        record["issue_bound_mib_per_worker"] = round(bound)
    print(json.dumps(record, indent=1, default=lambda v: np.asarray(v).tolist()))


if __name__ == "__main__":
    main()
