"""Faults during a block-wise run (workflows/large.py): a worker killed while blocks are
in flight, and the driver killed part-way through (then ``--resume``). Both must end in
the output of an undisturbed run, byte for byte, on a cluster of real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
pytest.importorskip("torch")

from napari_cellseg.core.synthetic import make_whole_cell_image  # noqa: E402

SHAPE = (300, 260)
SIZES = {"block": 128, "halo": 64}  # 3 x 3 blocks of ~0.5 s each
N_BLOCKS = 9


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    import tifffile

    path = tmp_path_factory.mktemp("faults") / "slide.tif"
    tifffile.imwrite(path, make_whole_cell_image(seed=1, shape=SHAPE).image, tile=(64, 64))
    return path


@pytest.fixture(scope="module")
def client():
    """Two single-thread worker processes on loopback (their nannies restart a killed one)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def undisturbed(slide, client, tmp_path_factory):
    from napari_cellseg.workflows.large import segment_large

    out = tmp_path_factory.mktemp("undisturbed") / "slide.zarr"
    result = segment_large(str(slide), out, client=client, device="cpu", **SIZES)
    assert result.n_blocks == N_BLOCKS and result.n_cells > 100
    return contents(out)


def contents(out: Path) -> tuple[list[np.ndarray], str]:
    """Every pyramid level and the cell table's text."""
    root = zarr.open_group(str(out), mode="r")
    levels = [root[d["path"]][:] for d in root.attrs["multiscales"][0]["datasets"]]
    return levels, (out / "cells.csv").read_text()


def assert_same(out: Path, expected) -> None:
    levels, table = contents(out)
    assert len(levels) == len(expected[0])
    for got, want in zip(levels, expected[0], strict=True):
        np.testing.assert_array_equal(got, want)
    assert table == expected[1]


def markers(out: Path) -> dict[str, int]:
    return {m.name: m.stat().st_mtime_ns for m in (out / "_work" / "blocks").glob("*.json")}


def marker_pid(out: Path, i: int, j: int) -> int:
    return json.loads((out / "_work" / "blocks" / f"{i}.{j}.json").read_text())["pid"]


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pids, seconds: float) -> list[int]:
    """The pids still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def test_a_worker_killed_mid_run_changes_nothing(slide, client, undisturbed, tmp_path, kill_busy_worker):
    from napari_cellseg.workflows.large import iter_segment_large

    out = tmp_path / "slide.zarr"
    pids = client.run(os.getpid)
    gen = iter_segment_large(str(slide), out, client=client, device="cpu", **SIZES)
    victim, in_flight = None, []
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if victim is None and step.done >= 1:  # the first block is done: kill a busy worker
            victim, keys = kill_busy_worker(client, pids, "cellseg-block-")
            assert not wait_gone([victim], 30)
            # Its blocks that were still unfinished when it died: (i, j) from the task key.
            blocks = [tuple(int(x) for x in k.split("-")[2:4]) for k in keys]
            in_flight = [ij for ij in blocks if not (out / "_work" / "blocks" / f"{ij[0]}.{ij[1]}.json").exists()]
    assert victim is not None and in_flight, "the kill came too late: no block was in flight"
    assert len(result.computed) == N_BLOCKS
    for i, j in in_flight:  # computed again by a live worker
        assert marker_pid(out, i, j) != victim
    assert_same(out, undisturbed)
    # The nanny restarted the killed worker.
    client.wait_for_workers(2, timeout=60)


def test_a_killed_driver_resumes_where_it_stopped(slide, client, undisturbed, tmp_path, capsys):
    from napari_cellseg.cli import main

    out = tmp_path / "slide.zarr"
    args = ["segment-large", str(slide), "--out", str(out), "--block", str(SIZES["block"]),
            "--halo", str(SIZES["halo"])]
    log = tmp_path / "driver.log"
    with log.open("w") as stream:
        driver = subprocess.Popen([sys.executable, "-m", "napari_cellseg.cli", *args, "--workers", "2"],
                                  stdout=stream, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while len(markers(out) if (out / "_work" / "blocks").is_dir() else {}) < 2:
            assert driver.poll() is None, f"the driver ended early: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no block done in 240 s: {log.read_text()[-2000:]}"
            time.sleep(0.02)
        workers = descendants(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        # Its worker processes end with it (they watch their parent); a block one of them
        # was writing is left without its done marker.
        left = wait_gone(workers, 30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
    for pid in left:  # should not happen; do not leave them running
        os.kill(pid, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived their driver"
    done = markers(out)
    assert 2 <= len(done) < N_BLOCKS, f"the kill came too late: {len(done)} blocks done"
    # Resume on another cluster: only the missing blocks run; the finished ones are not touched.
    assert main([*args, "--resume", "--scheduler", client.scheduler.address]) == 0
    assert f"({N_BLOCKS - len(done)} computed, {len(done)} already done)" in capsys.readouterr().out
    now = markers(out)
    assert len(now) == N_BLOCKS
    assert {name: now[name] for name in done} == done
    assert_same(out, undisturbed)
