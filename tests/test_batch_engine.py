"""Batches of frames (batch.py): resume that skips exactly the frames done with the same
settings, one task per frame on dask.distributed with the serial answer, a worker killed
mid-batch leaving every output written once, and the CLI's --workers / --resume / --zarr."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellseg.batch import STAGING, iter_segment_files
from napari_cellseg.core.synthetic import make_whole_cell_image
from napari_cellseg.progress import drain

N_FRAMES = 6


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for k in range(N_FRAMES):
        path = folder / f"frame{k}.tif"
        tifffile.imwrite(path, make_whole_cell_image(seed=10 + k, shape=(384, 416)).image)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def serial(frames, tmp_path_factory) -> Path:
    """The unet outputs of the frames, one after another in this process."""
    out = tmp_path_factory.mktemp("serial")
    results = drain(iter_segment_files(frames, out, "unet", device="cpu"))
    assert all(n > 20 for _, n in results)
    return out


def outputs(out: Path) -> dict[str, object]:
    """Each output file's content: labels as arrays, tables as frames, params minus nothing."""
    got = {}
    for f in sorted(out.iterdir()):
        if f.name.endswith("_masks.tif"):
            got[f.name] = tifffile.imread(f)
        elif f.name.endswith("_cells.csv"):
            got[f.name] = pd.read_csv(f)
        elif f.name.endswith("_params.json"):
            got[f.name] = json.loads(f.read_text())
        else:
            got[f.name] = None  # anything else is a stray file
    return got


def assert_same_outputs(out: Path, expected: Path) -> None:
    got, want = outputs(out), outputs(expected)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[name], value)
        elif isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(got[name], value)
        else:
            assert got[name] == value, name


def mtimes(out: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in out.iterdir()}


def test_resume_skips_done_frames_redoes_stopped_ones_and_refuses_other_settings(frames, tmp_path):
    out = tmp_path / "out"
    first = drain(iter_segment_files(frames[:3], out, "classic"))
    before = mtimes(out)
    assert len(before) == 9
    steps = []
    again = drain(iter_segment_files(frames[:3], out, "classic", resume=True), steps.append)
    assert again == first
    assert mtimes(out) == before  # nothing rewritten
    assert [(s.done, s.total) for s in steps] == [(3, 3)]
    # A frame stopped mid-write (its table missing): only it is redone.
    (out / "frame1_cells.csv").unlink()
    assert drain(iter_segment_files(frames[:3], out, "classic", resume=True)) == first
    now = mtimes(out)
    assert {k: now[k] for k in before if not k.startswith("frame1")} == \
        {k: v for k, v in before.items() if not k.startswith("frame1")}
    assert now["frame1_masks.tif"] != before["frame1_masks.tif"]
    # Other settings: resume refuses (naming the files), and so does a plain run.
    with pytest.raises(FileExistsError, match="other settings"):
        drain(iter_segment_files(frames[:3], out, "classic", params={"sigma": 3.0}, resume=True))
    with pytest.raises(FileExistsError, match=r"frame0_masks\.tif"):
        drain(iter_segment_files(frames[:3], out, "classic"))
    assert mtimes(out) == now
    # A changed image is another request: refused with resume too.
    changed = tmp_path / "frame0.tif"
    tifffile.imwrite(changed, tifffile.imread(frames[0])[::-1])
    with pytest.raises(FileExistsError, match="other settings"):
        drain(iter_segment_files([changed], out, "classic", resume=True))
    assert not (out / STAGING).exists()


def test_one_task_per_frame_on_the_engine_gives_the_serial_answer(frames, serial, client, tmp_path):
    out = tmp_path / "out"
    steps = []
    results = drain(iter_segment_files(frames, out, "unet", device="cpu", client=client), steps.append)
    assert [p.name for p, _ in results] == [p.name for p in frames]  # input order, whatever finished first
    assert [s.done for s in steps] == list(range(N_FRAMES + 1))
    assert_same_outputs(out, serial)


def test_one_scale_for_the_batch_on_the_engine_gives_the_serial_answer(frames, client, tmp_path):
    """same_scale: the scale read here, in the submitting process, reaches every task."""
    serial, engine = tmp_path / "serial", tmp_path / "engine"
    drain(iter_segment_files(frames, serial, "unet", device="cpu", same_scale=True))
    drain(iter_segment_files(frames, engine, "unet", device="cpu", client=client, same_scale=True))
    assert_same_outputs(engine, serial)
    for frame in frames:
        record = json.loads((engine / f"{frame.stem}_params.json").read_text())
        assert record["batch_scale"]["measured_on"] == [f.name for f in frames]
        assert record["pixel_size_from"] == "estimated from the batch: the median of 6 images' estimates"


def test_a_worker_killed_mid_batch_leaves_each_output_written_once(frames, serial, client, tmp_path,
                                                                   kill_busy_worker):
    out = tmp_path / "out"
    pids = client.run(os.getpid)
    gen = iter_segment_files(frames, out, "unet", device="cpu", client=client)
    victim = None
    while True:
        try:
            step = next(gen)
        except StopIteration:
            break
        if victim is None and step.done >= 1:
            victim, _ = kill_busy_worker(client, pids, "cellseg-frame-")
    assert victim is not None
    assert_same_outputs(out, serial)  # every output once, no staging left, none half-written
    client.wait_for_workers(2, timeout=60)


def test_cli_runs_frames_on_workers_and_resumes(frames, tmp_path, capsys):
    from napari_cellseg.cli import main

    out = tmp_path / "out"
    args = ["segment", *map(str, frames[:2]), "--out", str(out), "--method", "classic"]
    assert main([*args, "--workers", "2"]) == 0
    first = capsys.readouterr().out
    assert "frame0.tif:" in first and "frame1.tif:" in first
    before = mtimes(out)
    assert main([*args, "--resume"]) == 0
    assert mtimes(out) == before
    assert main(args) == 2
    assert "already exist" in capsys.readouterr().err
    assert main([*args, "--workers", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_cli_prints_each_images_warnings_that_its_worker_logged(tmp_path, capsys):
    """A worker's log is not shown: the warnings in each image's record are printed, named."""
    pytest.importorskip("distributed")
    from napari_cellseg.cli import main

    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, make_whole_cell_image(seed=1, shape=(64, 64)).image[:24, :24])
    assert main(["segment", str(tiny), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--model", "dense_tcells_multiscale", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "tiny.tif: " in captured.out and "see tiny_params.json" in captured.out
    assert "warning: tiny.tif: automatic scale: the image (24 x 24 px) is too small" in captured.err


def test_cli_zarr_is_the_block_wise_run(frames, tmp_path, capsys):
    pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr")
    from napari_cellseg.cli import main

    out = tmp_path / "slide.zarr"
    assert main(["segment", "--zarr", str(frames[0]), "--out", str(out), "--block", "256",
                 "--workers", "1", "--device", "cpu"]) == 0
    assert "4 blocks" in capsys.readouterr().out
    labels = zarr.open_group(str(out), mode="r")["0"][:]
    assert labels.shape == tifffile.imread(frames[0]).shape and labels.max() > 20
    assert main(["segment", "--zarr", str(frames[0]), "--out", str(tmp_path / "b.zarr"),
                 "--seed-split", "shape"]) == 2
    assert "not available block-wise" in capsys.readouterr().err
    assert main(["segment", str(frames[0]), "--zarr", str(frames[0]), "--out", str(tmp_path / "c")]) == 2
    assert "not both" in capsys.readouterr().err


def test_gpu_tasks_ask_for_a_gpu_resource_only_where_workers_declare_one(caplog):
    from napari_cellseg.workflows.engine import gpu_resources

    class FakeClient:
        def __init__(self, resources):
            self.resources = resources

        def scheduler_info(self, n_workers=-1):
            return {"workers": {"tcp://w1": {"nthreads": 1, "resources": self.resources}}}

    assert gpu_resources(FakeClient({"GPU": 1}), "cuda") == {"GPU": 1}
    assert gpu_resources(FakeClient({"GPU": 1}), "cuda:1") == {"GPU": 1}
    assert gpu_resources(FakeClient({"GPU": 1}), "cpu") is None
    with caplog.at_level("WARNING"):
        assert gpu_resources(FakeClient({}), "cuda") is None
    assert "no worker declares a GPU resource" in caplog.text
