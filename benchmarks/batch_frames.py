"""A folder of frames through the CLI on a dask LocalCluster: one task per frame.

    python benchmarks/batch_frames.py [--frames 1000] [--side 256] [--workers 2] [--serial 50]

Writes ``--frames`` frames (``--side`` px, uint16: random windows of the shipped
dense-tissue sample, turned and flipped) to a temporary folder, then runs, as a user would,
``napari-cellseg segment DIR/*.tif --out OUT --workers N`` in a subprocess (so that its
peak RSS is its own) and checks that every frame has exactly its three outputs. A
``--serial`` frame subset runs in one process, one after another, for the per-frame
cost without the engine; then ``--resume`` on the full folder shows how long skipping
the done frames takes. ``--viewer`` (needs a display, e.g. Xvfb) then runs the same
folder from napari's Batch widget with the same number of workers, into another folder,
and checks that its outputs equal the CLI's. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _viewer import RUN_WIDGET


def make_frames(folder: Path, n: int, side: int) -> list[Path]:
    """``n`` distinct frames: windows at random places of the shipped 512 px dense-tissue
    sample (uint16), each turned and flipped at random."""
    import tifffile

    from napari_cellseg.sample_data import shipped

    src = tifffile.imread(shipped("tissue.tif"))
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        r, c = rng.integers(0, src.shape[0] - side + 1), rng.integers(0, src.shape[1] - side + 1)
        image = np.rot90(src[r : r + side, c : c + side], int(rng.integers(4)))
        if rng.integers(2):
            image = image[:, ::-1]
        path = folder / f"frame{k:05d}.tif"
        tifffile.imwrite(path, np.ascontiguousarray(image))
        paths.append(path)
    return paths


def run_cli(args: list[str]) -> dict:
    """Run the CLI in a subprocess: seconds and the peak RSS of it and its children."""
    code = ("import resource, sys, time; from napari_cellseg.cli import main; t = time.perf_counter(); "
            "rc = main(sys.argv[1:]); dt = time.perf_counter() - t; "
            "print('BENCH', dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("BENCH")]
    if proc.returncode or not line:
        sys.exit(f"the CLI failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    _, dt, rss, _rc = line[-1].split()
    return {"seconds": round(float(dt), 1), "driver_peak_rss_mib": round(float(rss))}


VIEWER = RUN_WIDGET + r"""
import json, sys
from pathlib import Path
import napari
from napari_cellseg._widgets.batch import BatchWidget

folder, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
viewer = napari.Viewer(show=False)
widget = BatchWidget(viewer)
viewer.window.add_dock_widget(widget)
widget._input.value = folder
widget._output.value = out
widget._workers.value = workers
seconds = run_widget(widget)
print(json.dumps({"seconds_in_viewer": round(seconds, 1), "status": widget._runner.status.value}))
"""


def same_outputs(a: Path, b: Path) -> bool:
    """Equal masks and tables, file by file (the params differ only in nothing but paths)."""
    import pandas as pd
    import tifffile

    names = sorted(f.name for f in a.iterdir())
    if names != sorted(f.name for f in b.iterdir()):
        return False
    for name in names:
        if name.endswith("_masks.tif") and not np.array_equal(tifffile.imread(a / name), tifffile.imread(b / name)):
            return False
        if name.endswith("_cells.csv") and not pd.read_csv(a / name).equals(pd.read_csv(b / name)):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--serial", type=int, default=50, help="frames run one after another in one process")
    ap.add_argument("--viewer", action="store_true", help="also run the folder from the Batch widget")
    args = ap.parse_args()
    record: dict = {"frames": args.frames, "side": args.side, "workers": args.workers,
                    "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                 if ln.startswith("model name")), "unknown"), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        folder.mkdir()
        t = time.perf_counter()
        paths = make_frames(folder, args.frames, args.side)
        record["make_frames_s"] = round(time.perf_counter() - t, 1)
        mpx = args.frames * args.side**2 / 1e6
        if args.serial:
            sub = [str(p) for p in paths[: args.serial]]
            serial = run_cli(["segment", *sub, "--out", str(Path(tmp) / "serial"), "--device", "cpu"])
            serial["frames_per_s"] = round(args.serial / serial["seconds"], 2)
            record["serial_in_one_process"] = serial
        out = Path(tmp) / "out"
        every = [str(p) for p in paths]
        engine = run_cli(["segment", *every, "--out", str(out), "--device", "cpu", "--workers", str(args.workers)])
        engine["frames_per_s"] = round(args.frames / engine["seconds"], 2)
        engine["mpx_per_s"] = round(mpx / engine["seconds"], 3)
        record["engine"] = engine
        written = sorted(f.name for f in out.iterdir())
        expected = sorted(f"{p.stem}{s}" for p in paths for s in ("_masks.tif", "_cells.csv", "_params.json"))
        record["every_output_once"] = written == expected
        cells = [json.loads((out / f"{p.stem}_params.json").read_text())["cells"] for p in paths]
        record["cells"] = {"total": int(sum(cells)), "min_per_frame": int(min(cells))}
        record["resume_all_done"] = run_cli(["segment", *every, "--out", str(out), "--resume",
                                             "--workers", str(args.workers)])
        if args.viewer:
            vout = Path(tmp) / "viewer"
            proc = subprocess.run([sys.executable, "-c", VIEWER, str(folder), str(vout), str(args.workers)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"the viewer run failed:\n{proc.stderr[-3000:]}")
            record["viewer"] = json.loads(proc.stdout.strip().splitlines()[-1])
            record["viewer"]["equals_cli"] = same_outputs(vout, out)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
