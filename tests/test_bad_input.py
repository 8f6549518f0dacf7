"""Bad input, table-driven: every case gets a clear error (its type and a phrase of its
message) or the correct result, never a crash, a wrong answer with exit status 0 or an
error without words. The viewer's cases are in test_viewer_trust.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import napari_cellseg as ncs
from napari_cellseg.cli import main as cli
from napari_cellseg.core import synthetic as syn
from napari_cellseg.pipeline import LOW_CONFIDENCE

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
LESSON = syn.make_image()[0]
GT = np.zeros((20, 30), np.int32)
GT[2:8, 2:8], GT[10:18, 12:20] = 1, 2


def _corrupt_weights(tmp_path: Path) -> Path:
    """The shipped weights with random bytes written inside one tensor."""
    from napari_cellseg.model.registry import builtin_models

    data = bytearray(builtin_models()["dense_tcells"].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = np.random.default_rng(0).bytes(64)
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    return path


def _nan_weights(tmp_path: Path) -> Path:
    """A model file whose tensors hold NaN (saved without a checksum, as an old or
    foreign writer would)."""
    import torch
    from safetensors.torch import save_file

    from napari_cellseg.model.store import ModelInfo
    from napari_cellseg.model.unet import UNet, UNetConfig

    config = UNetConfig(channels=(4, 8))
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in UNet(config).state_dict().items()}
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path), metadata=ModelInfo(config=config).to_metadata())
    return path


def _wrong_architecture(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    from napari_cellseg.model.store import ModelInfo
    from napari_cellseg.model.unet import UNet, UNetConfig

    state = UNet(UNetConfig(channels=(4, 8))).state_dict()
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path), metadata=ModelInfo(config=UNetConfig(channels=(4, 8, 16))).to_metadata())
    return path


# (id, thunk taking tmp_path, exception type, phrase of its message)
API_ERRORS = [
    ("nan image", lambda t: ncs.predict(np.full((64, 64), np.nan)), ValueError, "NaN"),
    ("inf image", lambda t: ncs.segment(np.full((64, 64), np.inf)), ValueError, "NaN or infinite"),
    ("rgb image", lambda t: ncs.predict(np.zeros((64, 64, 3))), ValueError, "RGB"),
    ("stack", lambda t: ncs.predict(np.zeros((3, 64, 64))), ValueError, "2-D"),
    ("tiny image", lambda t: ncs.predict(np.zeros((4, 64))), ValueError, "too small"),
    ("complex image", lambda t: ncs.predict(np.zeros((64, 64), complex)), ValueError, "real numbers"),
    ("bool image", lambda t: ncs.predict(np.zeros((64, 64), bool)), ValueError, "real numbers"),
    ("string image", lambda t: ncs.predict(np.full((64, 64), "a")), ValueError, "real numbers"),
    ("pixel size 0.01", lambda t: ncs.predict(LESSON, pixel_size=0.01), ValueError, "outside [1/8, 8]"),
    ("pixel size 1000", lambda t: ncs.predict(LESSON, pixel_size=1000), ValueError, "outside [1/8, 8]"),
    ("pixel size nan", lambda t: ncs.predict(LESSON, pixel_size=float("nan")), ValueError, "finite"),
    ("pixel size inf", lambda t: ncs.predict(LESSON, pixel_size=float("inf")), ValueError, "finite"),
    ("pixel size -1", lambda t: ncs.predict(LESSON, pixel_size=-1), ValueError, "> 0"),
    ("pixel size text", lambda t: ncs.predict(LESSON, pixel_size="big"), ValueError, "number of µm"),
    ("pixel size True", lambda t: ncs.predict(LESSON, pixel_size=True), ValueError, "got True"),
    ("shrinks below 8 px", lambda t: ncs.predict(np.zeros((16, 16)), pixel_size=0.2),
     ValueError, "below 8 px"),
    ("top-hat nan", lambda t: ncs.predict(LESSON, tophat_um=float("nan")), ValueError, "tophat_um"),
    ("device tpu", lambda t: ncs.predict(LESSON, device="tpu"), ValueError, "device must be"),
    ("sensitivity 101", lambda t: ncs.segment(LESSON, sensitivity=101), ValueError, "sensitivity"),
    ("h -1", lambda t: ncs.segment(LESSON, h=-1, seed_split="shape"), ValueError, "h must be"),
    ("cell threshold 1", lambda t: ncs.segment(LESSON, cell_threshold=1.0), ValueError, "cell_threshold"),
    ("unknown parameter", lambda t: ncs.segment(LESSON, hh=3), TypeError, "unknown"),
    ("missing model", lambda t: ncs.predict(LESSON, model="no_such_model"), FileNotFoundError, "no model"),
    ("corrupt weights", lambda t: ncs.predict(LESSON, model=_corrupt_weights(t)), ValueError, "corrupt"),
    ("NaN weights", lambda t: ncs.predict(LESSON, model=_nan_weights(t)), ValueError, "NaN"),
    ("wrong architecture", lambda t: ncs.predict(LESSON, model=_wrong_architecture(t)),
     ValueError, "Missing key"),
    ("model of a wrong kind", lambda t: ncs.predict(LESSON, model=3), TypeError, "model must be"),
    ("evaluate bool masks", lambda t: ncs.evaluate(GT > 0, GT > 0), ValueError, "boolean mask"),
    ("evaluate float labels", lambda t: ncs.evaluate(GT, GT.astype(float)), ValueError, "integers"),
    ("evaluate negative labels", lambda t: ncs.evaluate(GT, -GT), ValueError, ">= 0"),
    ("evaluate shape mismatch", lambda t: ncs.evaluate(GT, GT[:, :29]), ValueError, "(20, 29)"),
    ("cell_table float labels", lambda t: ncs.cell_table(GT.astype(float)), ValueError, "integers"),
    ("cell_table negative labels", lambda t: ncs.cell_table(-GT), ValueError, ">= 0"),
    ("cell_table bool labels", lambda t: ncs.cell_table(GT > 0), ValueError, "boolean mask"),
    ("cell_table 3-D labels", lambda t: ncs.cell_table(GT[None]), ValueError, "2-D"),
    ("cell_table pixel size inf", lambda t: ncs.cell_table(GT, pixel_size=float("inf")), ValueError, "finite"),
    ("cell_table image shape", lambda t: ncs.cell_table(GT, np.zeros((3, 3))), ValueError, "differs"),
    ("missing image file", lambda t: ncs.read_image(t / "nope.tif"), FileNotFoundError, "no such file"),
    ("empty png", lambda t: ncs.read_image(_touch(t / "empty.png")), ValueError, "empty (0 bytes)"),
    ("not an image", lambda t: ncs.read_image(_write(t / "notes.png", b"hello")), ValueError, "cannot read"),
    ("binary png mask", lambda t: ncs.read_labels(_binary_png(t)), ValueError, "binary mask"),
    # Inputs added 2026-11-24: a layer's two-value scale, parameters of the wrong kind, a
    # recorded plane that is not there, training images of two pixel sizes.
    ("pixel size of two values", lambda t: ncs.segment(LESSON, np.array([0.5, 0.5])), ValueError,
     "pixel_size must be a number of µm > 0"),
    ("cell diameter as text", lambda t: ncs.segment(LESSON, cell_diameter="7.5"), ValueError,
     "cell_diameter must be a finite number of µm > 0"),
    ("seed diameter one number", lambda t: ncs.segment(LESSON, seed_diameter=5), ValueError,
     "seed_diameter must be two finite diameters"),
    ("evaluate min size -3", lambda t: ncs.evaluate(GT, GT, min_size=-3), ValueError, "min_size must be >= 0"),
    ("training images of two pixel sizes", lambda t: _pairs_pixel_size_mixed(t), ValueError,
     "state different pixel sizes"),
    ("one scale for a batch with a pixel size", lambda t: _same_scale(t, pixel_size=0.5), ValueError,
     "same_scale estimates one scale for the batch's images"),
    ("one scale for a batch of stacks", lambda t: _same_scale(t, image=np.zeros((3, 64, 64), np.float32)),
     ValueError, "a stack of shape (3, 64, 64)"),
]


def _same_scale(tmp_path: Path, image=LESSON, **kwargs):
    import tifffile

    from napari_cellseg.batch import iter_segment_files
    from napari_cellseg.progress import drain

    tifffile.imwrite(tmp_path / "a.tif", image)
    return drain(iter_segment_files([tmp_path / "a.tif"], tmp_path / "out", device="cpu", same_scale=True,
                                    **kwargs))


def _pairs_pixel_size_mixed(tmp_path: Path):
    import tifffile

    from napari_cellseg.io import pairs_pixel_size, write_labels

    for name, ppu in (("a", 4.0), ("b", 2.0)):  # 0.25 and 0.5 µm per pixel
        tifffile.imwrite(tmp_path / f"{name}.tif", LESSON.astype(np.float32), imagej=True, resolution=(ppu, ppu),
                         metadata={"unit": "um"})
        write_labels(tmp_path / f"{name}_masks.tif", np.ones(LESSON.shape, int))
    return pairs_pixel_size(tmp_path, tmp_path)


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _binary_png(tmp_path: Path) -> Path:
    import imageio.v3 as iio

    path = tmp_path / "mask_masks.png"
    iio.imwrite(path, ((GT > 0) * 255).astype(np.uint8))
    return path


@pytest.mark.parametrize(("thunk", "error", "phrase"), [pytest.param(*c[1:], id=c[0]) for c in API_ERRORS])
def test_api_refuses_with_words(tmp_path, thunk, error, phrase):
    with pytest.raises(error) as info:
        thunk(tmp_path)
    assert phrase in str(info.value)


# Correct results where an input is odd but meaningful.
def test_odd_but_valid_inputs_give_the_right_answer():
    from napari_cellseg.core.labels import relabel

    assert ncs.segment(np.full((64, 64), 7.0)).max() == 0  # constant: no cell
    assert ncs.segment(np.zeros((64, 64), np.uint8), pixel_size=0).max() == 0  # 0 = the model's own
    # Integer camera counts give the classic baseline its 8 cells (was 1 on raw counts).
    lesson16 = tifffile.imread(SAMPLES / "lesson.tif")
    assert lesson16.dtype == np.uint16
    assert ncs.segment_classic(lesson16).max() == 8
    assert ncs.segment_classic((LESSON / LESSON.max() * 255).astype(np.uint8)).max() == 8
    assert ncs.segment_classic(LESSON).max() == 8  # a 0-1 float image as it is
    # Huge, sparse ids: one table row each, ids kept.
    huge = np.where(GT > 0, GT.astype(np.int64) + 2**40, 0)
    table = ncs.cell_table(huge, pixel_size=0.5)
    assert table["label"].tolist() == [1 + 2**40, 2 + 2**40]
    assert table["area_px"].tolist() == [36, 64]
    assert table["area_um2"].tolist() == [9.0, 16.0]
    assert relabel(huge).max() == 2
    # A label image with float type but whole numbers read from a file is accepted.
    assert ncs.evaluate(GT, GT).ap == 1.0


def test_noise_is_flagged(caplog):
    image = np.random.default_rng(0).normal(100, 10, (256, 256)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="napari_cellseg"):
        pred = ncs.predict(image, device="cpu")
    # The default estimate finds nothing to measure in noise (enlarged 4-5x it would read
    # as tiny cells): the model's scale, said, and the network's doubt flagged.
    assert pred.scale is None and "looks like noise" in caplog.text
    assert pred.confidence < LOW_CONFIDENCE
    assert "unsure about most of this image" in caplog.text
    caplog.clear()
    tissue = tifffile.imread(SAMPLES / "tissue.tif")[:256, :256]
    with caplog.at_level(logging.WARNING, logger="napari_cellseg"):
        assert ncs.predict(tissue, device="cpu").confidence > 0.8
    assert "unsure" not in caplog.text


# ---- the command line: exit status 2 and the reason on stderr, before any work ----------
def _lesson_file(tmp_path: Path) -> Path:
    path = tmp_path / "lesson.tif"
    tifffile.imwrite(path, tifffile.imread(SAMPLES / "lesson.tif"))
    return path


CLI_ERRORS = [
    ("pixel size nan", ["--pixel-size", "nan"], "finite"),
    ("pixel size inf", ["--pixel-size", "inf"], "finite"),
    ("pixel size 1000", ["--pixel-size", "1000"], "outside [1/8, 8]"),
    ("pixel size 0.001", ["--pixel-size", "0.001"], "outside [1/8, 8]"),
    ("device tpu", ["--device", "tpu"], "device must be"),
    ("sensitivity 150", ["--sensitivity", "150"], "sensitivity must be in [0, 100]"),
    ("corrupt model", ["--model", "CORRUPT"], "corrupt"),
]


@pytest.mark.parametrize(("extra", "phrase"), [pytest.param(*c[1:], id=c[0]) for c in CLI_ERRORS])
def test_cli_refuses_with_words(tmp_path, capsys, extra, phrase):
    extra = [str(_corrupt_weights(tmp_path)) if a == "CORRUPT" else a for a in extra]
    out = tmp_path / "out"
    assert cli(["segment", str(_lesson_file(tmp_path)), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err
    assert not list(out.glob("*_masks.tif"))  # nothing written


def test_cli_slide_options_are_checked_too(tmp_path, capsys):
    """--workers 0 and --channel were passed over in silence with --zarr."""
    slide = tmp_path / "slide.tif"
    slide.write_bytes(_lesson_file(tmp_path).read_bytes())
    for extra, phrase in ((["--workers", "0"], "--workers must be at least 1"),
                          (["--channel", "1"], "--channel goes with images, not --zarr")):
        assert cli(["segment", "--zarr", str(slide), "--out", str(tmp_path / "o.zarr"), *extra]) == 2
        assert phrase in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_cli_output_folder_checked_before_work(tmp_path, capsys, monkeypatch):
    import os
    import shutil
    from collections import namedtuple

    image = _lesson_file(tmp_path)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert cli(["segment", str(image), "--out", str(not_a_folder)]) == 2
    assert "not a folder" in capsys.readouterr().err
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    assert cli(["segment", str(image), "--out", str(tmp_path / "full")]) == 2
    assert "MiB free" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert cli(["segment", str(image), "--out", str(tmp_path / "locked")]) == 2
    assert "no permission to write" in capsys.readouterr().err


def test_cli_classic_on_16_bit_counts_and_binary_masks(tmp_path, capsys):
    import imageio.v3 as iio

    image = _lesson_file(tmp_path)
    assert cli(["segment", str(image), "--out", str(tmp_path / "o"), "--method", "classic"]) == 0
    assert tifffile.imread(tmp_path / "o" / "lesson_masks.tif").max() == 8
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    iio.imwrite(gt / "a_masks.png", ((GT > 0) * 255).astype(np.uint8))
    iio.imwrite(pred / "a_masks.png", ((GT > 0) * 255).astype(np.uint8))
    assert cli(["evaluate", "--gt", str(gt), "--pred", str(pred)]) == 2
    assert "binary mask" in capsys.readouterr().err


# ---- fuzzing the core entry points -------------------------------------------------
DOCUMENTED = (ValueError, TypeError)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.int64, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.one_of(st.integers(-3, 5), st.just(2**31 - 1))),
       st.sampled_from([np.int8, np.int32, np.int64, np.uint16, np.float32, np.float64, np.bool_]),
       arrays(np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 4)))
def test_fuzz_evaluate_and_cell_table(values, dtype, other):
    labels = values.astype(dtype)
    for fn in (lambda: ncs.cell_table(labels), lambda: ncs.evaluate(labels, labels),
               lambda: ncs.evaluate(other, labels)):
        try:
            out = fn()
        except DOCUMENTED:
            continue
        if isinstance(out, ncs.Evaluation):
            assert 0.0 <= out.ap <= 1.0 and np.isfinite(out.ap)
        else:
            assert list(out["label"]) == sorted(set(np.unique(labels[labels > 0]).tolist()))
            assert not out[["area_px", "centroid_y", "centroid_x"]].isna().any().any()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.int64, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(0, 200)),
       st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int16]))
def test_fuzz_segment_classic(values, dtype):
    image = values.astype(dtype)
    try:
        labels = ncs.segment_classic(image)
    except DOCUMENTED:
        return
    assert labels.shape == image.shape and labels.dtype == np.int32
    ids = np.unique(labels)
    assert ids[0] == 0 or labels.min() > 0
    assert np.array_equal(ids[ids > 0], np.arange(1, labels.max() + 1))  # consecutive


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.int64, st.tuples(st.integers(6, 48), st.integers(6, 48)), elements=st.integers(0, 255)),
       st.sampled_from([np.uint8, np.uint16, np.float32]),
       st.sampled_from([None, 0.25, 0.5, 1.0]))
def test_fuzz_segment(values, dtype, pixel_size):
    image = values.astype(dtype)
    try:
        labels = ncs.segment(image, pixel_size=pixel_size, device="cpu")
    except DOCUMENTED:
        return
    assert labels.shape == image.shape
    ids = np.unique(labels)
    assert np.array_equal(ids[ids > 0], np.arange(1, labels.max() + 1))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64), st.sampled_from([".tif", ".png"]))
def test_fuzz_read_image_of_garbage(tmp_path, data, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="cannot read"):
        ncs.read_image(path)
