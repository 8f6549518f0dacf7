"""A folder of frames through the CLI on a dask LocalCluster: one task per frame.

    python benchmarks/batch_frames.py [--frames 1000] [--side 256] [--workers 2] [--serial 50]

Writes ``--frames`` frames (``--side`` px, uint16: random windows of the shipped
dense-tissue sample, turned and flipped) to a temporary folder, then runs, as a user would,
``napari-cellseg segment DIR/*.tif --out OUT --workers N`` in a subprocess (so that its
peak RSS is its own) and checks that every frame has exactly its three outputs. A
``--serial`` frame subset runs in one process, one after another, for the per-frame
cost without the engine; then ``--resume`` on the full folder shows how long skipping
the done frames takes. Prints one JSON record.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--serial", type=int, default=50, help="frames run one after another in one process")
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
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
