"""A whole slide as a user runs it: a striped TIFF -> ``napari-cellseg convert`` ->
``napari-cellseg segment --zarr`` on a LocalCluster, then the same slide from the viewer's
Whole slide widget; the memory of every process sampled throughout.

    python benchmarks/slide_end_to_end.py [--size 16384] [--block 4096] [--workers 2] [--viewer]

The slide is the shipped 512 px dense-tissue sample (uint16) mirrored to ``--size``
squared, written strip by strip to a striped TIFF (never whole in memory). Each step runs
in a subprocess; a thread samples the resident memory (RSS) of that process and of all its
descendants (dask's nanny and worker processes) every 0.5 s and reports each one's peak
and the peak of their sum. The CLI and the viewer results must be the same labels (cell
count and a checksum of the full-resolution labels). ``--viewer`` needs a display (Xvfb).
Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _viewer import RUN_WIDGET


def write_tiff(path: Path, size: int) -> None:
    import tifffile

    from napari_cellseg.sample_data import shipped

    base = tifffile.imread(shipped("tissue.tif"))
    t = base.shape[0]
    row = [np.concatenate([base[:: -1 if i % 2 else 1, :: -1 if j % 2 else 1]
                           for j in range(-(-size // t))], axis=1)[:, :size] for i in range(2)]

    def strips():
        for r in range(0, size, 256):  # 256-row strips, as scanners write them
            rows = np.arange(r, min(r + 256, size))
            yield np.stack([row[(k // t) % 2][k % t] for k in rows])

    tifffile.imwrite(path, strips(), shape=(size, size), dtype=np.uint16, rowsperstrip=256)


class Sampler:
    """Peak RSS (MiB) of a process tree, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.5):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, tuple[str, float]] = {}
        self.peak_sum = 0.0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0.0
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    name = " ".join(p.cmdline()[1:3])[-60:]
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peaks.get(p.pid, ("", 0.0))[1]:
                    self.peaks[p.pid] = (name, rss)
            self.peak_sum = max(self.peak_sum, total)
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join()
        top = sorted(self.peaks.values(), key=lambda v: -v[1])
        return {"peak_sum_mib": round(self.peak_sum), "peak_per_process_mib": [round(v) for _, v in top[:6]]}


def run(cmd: list[str]) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    out, _ = proc.communicate()
    memory = sampler.stop()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"seconds": round(time.perf_counter() - t, 1), **memory, "last_line": out.strip().splitlines()[-1]}


VIEWER = RUN_WIDGET + r"""
import json, sys
import napari
from napari_cellseg._widgets.slide import SLIDE_CELLS_LAYER, SlideWidget

slide, out, block, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
viewer = napari.Viewer(show=False)
layer = viewer.open(slide, plugin="napari")[0]  # napari's own zarr reader: multiscale, lazy
widget = SlideWidget(viewer)
viewer.window.add_dock_widget(widget)
widget._image.value = layer
widget._output.value = out
widget._block.value = block
widget._workers.value = workers
dt = run_widget(widget)
labels = viewer.layers[SLIDE_CELLS_LAYER]
print(json.dumps({"seconds_in_viewer": round(dt, 1), "status": widget._runner.status.value,
                  "multiscale": bool(labels.multiscale), "source_sent": str(widget.result.path)}))
"""


def labels_digest(out: Path) -> dict:
    import hashlib

    import zarr

    arr = zarr.open_group(str(out), mode="r")["0"]
    h = hashlib.sha256()
    for r in range(0, arr.shape[0], 2048):
        h.update(np.ascontiguousarray(arr[r : r + 2048]).tobytes())
    return {"sha256": h.hexdigest()[:16], "cells": sum(1 for _ in open(out / "cells.csv")) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--viewer", action="store_true")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "napari_cellseg.cli"]
    record: dict = {"size": args.size, "block": args.block, "workers": args.workers, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tif, zarr_in = Path(tmp) / "slide.tif", Path(tmp) / "slide.ome.zarr"
        t = time.perf_counter()
        write_tiff(tif, args.size)
        record["write_tiff_s"] = round(time.perf_counter() - t, 1)
        record["convert"] = run([*exe, "convert", str(tif), "--out", str(zarr_in)])
        out = Path(tmp) / "cells_cli.zarr"
        record["segment_cli"] = run([*exe, "segment", "--zarr", str(zarr_in), "--out", str(out),
                                     "--block", str(args.block), "--workers", str(args.workers),
                                     "--device", "cpu"])
        record["segment_cli"].update(labels_digest(out))
        if args.viewer:
            vout = Path(tmp) / "cells_viewer.zarr"
            v = run([sys.executable, "-c", VIEWER, str(zarr_in), str(vout), str(args.block), str(args.workers)])
            v.update(json.loads(v.pop("last_line")))
            v.update(labels_digest(vout))
            record["segment_viewer"] = v
            record["viewer_equals_cli"] = v["sha256"] == record["segment_cli"]["sha256"]
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
