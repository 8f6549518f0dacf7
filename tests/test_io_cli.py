import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellseg import cli, io
from napari_cellseg.core import synthetic as syn


@pytest.fixture
def lesson_tif(tmp_path):
    path = tmp_path / "lesson.tif"
    tifffile.imwrite(path, syn.make_image()[0].astype(np.float32))
    return path


def run_cli(*args):
    return cli.main([str(a) for a in args])


def test_cli_classic_counts_eight_cells_and_writes_outputs(lesson_tif, tmp_path):
    out = tmp_path / "results"
    assert run_cli("segment", lesson_tif, "--out", out, "--method", "classic") == 0
    labels = tifffile.imread(out / "lesson_masks.tif")
    assert labels.dtype == np.uint16 and labels.max() == 8
    table = pd.read_csv(out / "lesson_cells.csv")
    assert len(table) == 8
    assert list(table["label"]) == list(range(1, 9))
    np.testing.assert_array_equal(table["area_px"], np.bincount(labels.ravel())[1:])
    assert {"centroid_y", "centroid_x", "mean_intensity", "total_intensity", "bright"} <= set(table)


def test_cli_never_overwrites_without_flag(lesson_tif, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "lesson_masks.tif").write_bytes(b"keep me")
    assert run_cli("segment", lesson_tif, "--out", out, "--method", "classic") == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "lesson_masks.tif").read_bytes() == b"keep me"
    assert not (out / "lesson_cells.csv").exists()
    assert run_cli("segment", lesson_tif, "--out", out, "--method", "classic", "--overwrite") == 0
    assert tifffile.imread(out / "lesson_masks.tif").max() == 8


def test_cli_missing_and_unreadable_files_are_clear(tmp_path, capsys):
    assert run_cli("segment", tmp_path / "nope.tif", "--out", tmp_path, "--method", "classic") == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert run_cli("segment", bad, "--out", tmp_path / "o", "--method", "classic") == 2
    assert "cannot read" in capsys.readouterr().err


def test_rgb_png_uses_the_live_channel(tmp_path, caplog):
    image = (syn.make_image()[0] / 2 * 255).clip(0, 255).astype(np.uint8)
    rgb = np.zeros((*image.shape, 3), np.uint8)
    rgb[..., 0] = image  # like the dense set: signal in red only
    path = tmp_path / "rgb_img.png"
    iio.imwrite(path, rgb)
    with caplog.at_level("INFO", logger="napari_cellseg"):
        read = io.read_image(path)
    np.testing.assert_array_equal(read, image.astype(np.float32))
    assert "channel 0" in caplog.text
    assert run_cli("segment", path, "--out", tmp_path / "o", "--method", "classic",
                   "--threshold", "0.5", "--sigma", "2") == 0
    np.testing.assert_array_equal(io.read_image(path, channel=1), 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_read_image_dtypes(tmp_path, dtype):
    data = (np.arange(64 * 48).reshape(64, 48) % 200).astype(dtype)
    for suffix in (".tif", ".png") if dtype != np.float32 else (".tif",):
        path = tmp_path / f"x{suffix}"
        (tifffile.imwrite(path, data) if suffix == ".tif" else iio.imwrite(path, data))
        out = io.read_image(path)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, data.astype(np.float32))


@pytest.mark.parametrize("compression", ["lzw", "zstd", "jpeg2000"])
def test_compressed_tiffs_are_read(tmp_path, compression):
    """LZW (the Cell Tracking Challenge's TIFFs, many microscopes' and Fiji's option), zstd
    and JPEG 2000 need imagecodecs, a dependency: without it tifffile refuses them."""
    data = (np.arange(96 * 80).reshape(96, 80) % 4000).astype(np.uint16)
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, data, compression=compression,
                     **({"compressionargs": {"level": 0}} if compression == "jpeg2000" else {}))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression.name.lower().startswith(compression[:4])
    np.testing.assert_array_equal(io.read_image(path), data.astype(np.float32))


def test_labels_round_trip_and_width(tmp_path):
    small = np.array([[0, 1], [70000 // 2, 2]], dtype=np.int64)
    io.write_labels(tmp_path / "a.png", small)
    back = io.read_labels(tmp_path / "a.png")
    np.testing.assert_array_equal(back, small)
    big = np.array([[0, 70000]], dtype=np.int64)
    io.write_labels(tmp_path / "b.tif", big)
    assert tifffile.imread(tmp_path / "b.tif").dtype == np.uint32
    np.testing.assert_array_equal(io.read_labels(tmp_path / "b.tif"), big)
    with pytest.raises(ValueError, match="16-bit PNG"):
        io.write_labels(tmp_path / "c.png", big)
    with pytest.raises(FileExistsError):
        io.write_labels(tmp_path / "a.png", small)


def test_pair_stem():
    assert io.pair_stem("x/M1_Position8_CD3_train_masks.png") == "M1_Position8_CD3_train"
    assert io.pair_stem("M1_Position8_CD3_train_img.png") == "M1_Position8_CD3_train"
    assert io.pair_stem("a_labels.tif") == io.pair_stem("a.tiff") == "a"
    # What segment writes for x_img.png and x.ome.tif pairs with x_masks.tif (it stayed x_img).
    assert io.pair_stem("001_img_masks.tif") == io.pair_stem("001_masks.tif") == "001"
    assert io.pair_stem("x.ome.tif") == io.pair_stem("x.ome_masks.tif") == io.pair_stem("x_masks.tif") == "x"
    # x_masks.ome.tif is a mask (its Path.stem, "x_masks.ome", does not end in _masks).
    assert io.is_label_file("x_masks.ome.tif") and io.is_label_file("x.ome_masks.tif")
    assert not io.is_label_file("x.ome.tif") and not io.is_label_file("x_img.png")


def test_channels_stored_first_or_with_alpha_are_channels_not_planes(tmp_path, capsys):
    """A planar RGB TIFF (3, M, N), an ImageJ composite CYX and a grey PNG with alpha were
    read as stacks of 2-3 planes ("split the stack"), and --channel said "one channel"."""
    import imageio.v3 as iio

    cell = np.zeros((32, 32), np.float32)
    cell[8:20, 8:20] = 1.0
    tifffile.imwrite(tmp_path / "planar.tif", (np.stack([cell * 0, cell, cell * 0]) * 200).astype(np.uint8),
                     photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(io.read_image(tmp_path / "planar.tif"), cell * 200)  # the live channel
    # 16-bit planes stored the same way (tifffile's default for any (3, M, N) array) are a
    # z-stack or time-lapse far more often than colour: they stay planes.
    tifffile.imwrite(tmp_path / "planes.tif", (np.stack([cell, cell * 2, cell * 3]) * 100).astype(np.uint16),
                     photometric="rgb", planarconfig="separate")
    assert io.read_image(tmp_path / "planes.tif").shape == (3, 32, 32)
    # An ImageJ composite's 4th channel is a channel (e.g. DAPI), not alpha.
    tifffile.imwrite(tmp_path / "four.tif", np.stack([cell * 0, cell * 0, cell * 0, cell * 9]), imagej=True,
                     metadata={"axes": "CYX"})
    np.testing.assert_array_equal(io.read_image(tmp_path / "four.tif"), cell * 9)
    tifffile.imwrite(tmp_path / "composite.tif", np.stack([cell * 0, cell * 5]), imagej=True,
                     metadata={"axes": "CYX"})
    np.testing.assert_array_equal(io.read_image(tmp_path / "composite.tif"), cell * 5)
    assert io.read_image(tmp_path / "composite.tif", channel=0).max() == 0
    grey_alpha = np.stack([(cell * 200).astype(np.uint8), np.full((32, 32), 255, np.uint8)], axis=-1)
    iio.imwrite(tmp_path / "la.png", grey_alpha)
    np.testing.assert_array_equal(io.read_image(tmp_path / "la.png"), cell * 200)
    # A z-stack stays a stack, and the CLI refuses it in words (README: stacks in the viewer).
    tifffile.imwrite(tmp_path / "z.tif", np.stack([cell] * 3), imagej=True, metadata={"axes": "ZYX"})
    assert io.read_image(tmp_path / "z.tif").shape == (3, 32, 32)
    assert run_cli("segment", tmp_path / "z.tif", "--out", tmp_path / "o", "--method", "classic") == 2
    assert "a stack of shape (3, 32, 32)" in capsys.readouterr().err


def test_a_network_that_outputs_nan_is_an_error_not_zero_cells(monkeypatch):
    """README: NaN probabilities raise FloatingPointError, never 0 cells."""
    import torch

    import napari_cellseg as ncs
    from napari_cellseg.model.store import load_model

    net, info = load_model()
    monkeypatch.setattr(type(net), "forward", lambda self, x: torch.full((x.shape[0], 3, *x.shape[2:]), float("nan")))
    image = np.random.default_rng(0).random((64, 64), np.float32)
    with pytest.raises(FloatingPointError, match="NaN or infinite probabilities"):
        ncs.predict(image, 0.5, model=(net, info), device="cpu")


def test_an_option_of_the_other_method_is_refused_not_ignored(lesson_tif, tmp_path, capsys):
    """--method classic --sensitivity 80 ran the classic method and ignored the sensitivity."""
    out = tmp_path / "o"
    assert run_cli("segment", lesson_tif, "--out", out, "--method", "classic", "--sensitivity", "80") == 2
    assert "--sensitivity goes with --method unet, not classic" in capsys.readouterr().err
    assert run_cli("segment", lesson_tif, "--out", out, "--method", "classic", "--device", "cpu") == 2
    assert "--device goes with --method unet, not classic" in capsys.readouterr().err
    assert run_cli("segment", lesson_tif, "--out", out, "--sigma", "5", "--split", "distance") == 2
    assert "--sigma, --split go with --method classic, not unet" in capsys.readouterr().err
    assert run_cli("segment", lesson_tif, "--out", out, "--method", "classic", "--min-size", "-5") == 2
    assert "--min-size must be >= 0" in capsys.readouterr().err
    assert not out.exists()  # refused before any work
    gt, pred, a = evaluate_folders(tmp_path)
    io.write_labels(gt / "x_masks.tif", a)
    io.write_labels(pred / "x_masks.tif", a)
    assert run_cli("evaluate", "--gt", gt, "--pred", pred, "--min-size", "-3") == 2
    assert "min_size must be >= 0 pixels, got -3" in capsys.readouterr().err


def test_noise_sweep_writes_csv_and_png(tmp_path):
    assert run_cli("noise-sweep", "--out", tmp_path, "--n", "4") == 0
    df = pd.read_csv(tmp_path / "noise_sweep.csv")
    assert list(df["noise"]) == [0.05, 0.10, 0.15, 0.20, 0.25]
    assert df.loc[df["noise"] == 0.05, "mean_count"].item() == 8.0
    assert iio.imread(tmp_path / "noise_sweep.png").ndim == 3
    assert run_cli("noise-sweep", "--out", tmp_path, "--n", "4") == 2  # no silent overwrite


def test_sample_command_writes_the_generators_output(tmp_path):
    assert run_cli("sample", "--out", tmp_path) == 0
    lesson = tifffile.imread(tmp_path / "lesson.tif")
    assert lesson.dtype == np.uint16
    # 16-bit counts: the default normalisation puts them on the thresholds' 0-1 scale.
    assert run_cli("segment", tmp_path / "lesson.tif", "--out", tmp_path / "o", "--method", "classic") == 0
    assert tifffile.imread(tmp_path / "o" / "lesson_masks.tif").max() == 8
    # Without it, the threshold is in counts.
    assert run_cli("segment", tmp_path / "lesson.tif", "--out", tmp_path / "raw", "--method", "classic",
                   "--normalize", "none", "--threshold", str(0.5 * lesson.max() / syn.make_image()[0].max())) == 0
    assert tifffile.imread(tmp_path / "raw" / "lesson_masks.tif").max() == 8


def test_committed_sample_data_matches_generator(tmp_path):
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "sample_data"
    assert run_cli("sample", "--out", tmp_path) == 0
    for f in sorted(tmp_path.iterdir()):
        committed, fresh = tifffile.imread(folder / f.name), tifffile.imread(f)
        assert committed.shape == fresh.shape and committed.dtype == fresh.dtype, f.name
        # Float rounding may differ by a count between library versions; more may not.
        if "masks" in f.name:
            assert np.mean(committed == fresh) > 0.999, f.name
        else:
            assert np.abs(committed.astype(int) - fresh).max() <= 2, f.name


def test_import_is_light():
    code = ("import sys, napari_cellseg; heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt5', "
            "'PySide6', 'magicgui') if m in sys.modules]; print(heavy); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_mentions_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for cmd in ("segment", "evaluate", "train", "noise-sweep", "sample"):
        assert cmd in text


def evaluate_folders(tmp_path):
    """Empty gt/ and pred/ folders and a two-cell label image."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    a = np.zeros((20, 20), np.uint16)
    a[2:8, 2:8] = 1
    a[10:18, 10:18] = 2
    return gt, pred, a


def test_evaluate_json_has_map(tmp_path):
    gt, pred, a = evaluate_folders(tmp_path)
    io.write_labels(gt / "img1_masks.png", a)
    io.write_labels(pred / "img1.tif", np.where(a == 2, 7, 0))  # one found, one missed
    io.write_labels(gt / "lonely_masks.png", a)
    assert run_cli("evaluate", "--gt", gt, "--pred", pred, "--json", tmp_path / "r.json") == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["mAP"] == pytest.approx(0.5)
    assert result["unpaired_gt"] == ["lonely"]


def test_evaluate_pairs_segments_outputs_and_refuses_two_files_of_one_name(tmp_path, capsys):
    gt, pred, a = evaluate_folders(tmp_path)
    io.write_labels(gt / "001_masks.tif", a)  # Cellpose-style truth for 001_img.png
    io.write_labels(pred / "001_img_masks.tif", a)  # what segment writes for it
    assert run_cli("evaluate", "--gt", gt, "--pred", pred) == 0
    assert "mAP 1.000" in capsys.readouterr().out
    io.write_labels(gt / "001_labels.png", a)  # a second truth of one name: which one is scored?
    assert run_cli("evaluate", "--gt", gt, "--pred", pred) == 2
    assert "001_labels.png and 001_masks.tif" in capsys.readouterr().err
    (gt / "001_labels.png").unlink()
    (pred / "001_img_masks.tif").rename(pred / "other_masks.tif")
    assert run_cli("evaluate", "--gt", gt, "--pred", pred) == 2
    err = capsys.readouterr().err
    assert "no ground-truth / prediction pairs" in err and "(001_masks.tif)" in err and "(other_masks.tif)" in err


def test_evaluate_ignores_raw_images_beside_masks(tmp_path, capsys):
    gt, pred, a = evaluate_folders(tmp_path)
    io.write_labels(gt / "img1_masks.tif", a)
    tifffile.imwrite(gt / "img1.tif", a.astype(np.float32))  # the raw image, not a mask
    io.write_labels(pred / "img1_masks.tif", a)
    assert run_cli("evaluate", "--gt", gt, "--pred", pred) == 0
    out = capsys.readouterr()
    assert "mAP 1.000" in out.out and "warning" not in out.err


def test_cli_unet_seed_options_reach_the_segmentation(tmp_path):
    import napari_cellseg as ncs

    s = syn.make_whole_cell_image(seed=3, shape=(128, 128), cell_radius=7.5, density=0.8, stain="membrane")
    path = tmp_path / "tissue.tif"
    tifffile.imwrite(path, s.image.astype(np.float32))
    assert run_cli("segment", path, "--out", tmp_path / "a", "--device", "cpu", "--seed-split", "shape",
                   "--h", "2", "--cell-threshold", "0.5") == 0
    record = json.loads((tmp_path / "a" / "tissue_params.json").read_text())
    pred = ncs.predict(s.image.astype(np.float32), device="cpu")
    # Every value used is recorded: the options given, the model's defaults for the rest.
    used = pred.params(seed_split="shape", h=2.0, cell_threshold=0.5).to_dict()
    assert record["parameters"] == {k: list(v) if isinstance(v, tuple) else v for k, v in used.items()}
    assert record["parameters"]["h"] == 2.0 and record["parameters"]["seed_split"] == "shape"
    written = tifffile.imread(tmp_path / "a" / "tissue_masks.tif")
    expected = pred.segment(seed_split="shape", h=2.0, cell_threshold=0.5)
    assert expected.max() > 0
    np.testing.assert_array_equal(written, expected)
    assert run_cli("segment", path, "--out", tmp_path / "b", "--device", "cpu",
                   "--h-probability", "0.3", "--sensitivity", "70") == 0
    # Both options reach the segmentation and its record (on this crop they happen to
    # change no cell, so the record is what shows they were not dropped).
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b" / "tissue_masks.tif"),
                                  pred.segment(h_probability=0.3, sensitivity=70))
    used_b = json.loads((tmp_path / "b" / "tissue_params.json").read_text())["parameters"]
    assert used_b["h_probability"] == 0.3 and used_b["sensitivity"] == 70


def test_write_results_checks_every_target_first(tmp_path):
    labels = np.zeros((12, 12), np.int32)
    labels[1:4, 1:4] = 1
    labels[6:10, 6:10] = 2
    image = labels.astype(np.float32) * 2
    paths = io.write_results(tmp_path, "a", labels, image, 0.5, {"method": "test", "h": (1, 2)})
    assert {k: p.name for k, p in paths.items()} == {"labels": "a_masks.tif", "table": "a_cells.csv",
                                                     "params": "a_params.json"}
    np.testing.assert_array_equal(tifffile.imread(paths["labels"]), labels)
    table = pd.read_csv(paths["table"])
    assert list(table["area_px"]) == [9, 16] and list(table["mean_intensity"]) == [2.0, 4.0]
    assert json.loads(paths["params"].read_text()) == {"method": "test", "h": [1, 2], "cells": 2}
    # Only the params file of "b" exists: nothing of "b" is written, the error names it.
    (tmp_path / "b_params.json").write_text("keep")
    with pytest.raises(FileExistsError, match=r"b_params\.json already exists"):
        io.write_results(tmp_path, "b", labels)
    assert not (tmp_path / "b_masks.tif").exists() and not (tmp_path / "b_cells.csv").exists()
    assert (tmp_path / "b_params.json").read_text() == "keep"
    io.write_results(tmp_path, "b", labels, overwrite=True, labels_format=".png")
    assert json.loads((tmp_path / "b_params.json").read_text()) == {"cells": 2}
    with pytest.raises(ValueError, match="differ in shape"):
        io.write_results(tmp_path, "c", labels, image[:5])


def test_write_results_writes_a_stack_plane_by_plane(tmp_path):
    labels = np.zeros((2, 10, 10), np.int32)
    labels[0, 1:4, 1:4] = 1  # 9 px
    labels[1, 1:3, 1:3], labels[1, 5:9, 5:9] = 1, 2  # 4 and 16 px: plane 1's own ids
    image = np.stack([np.full((10, 10), 3.0), np.full((10, 10), 5.0)])
    paths = io.write_results(tmp_path, "s", labels, image, 0.5)
    np.testing.assert_array_equal(tifffile.imread(paths["labels"]), labels)
    with tifffile.TiffFile(paths["labels"]) as tif:  # planes, not the samples of one RGB image
        assert len(tif.pages) == 2 and tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    table = pd.read_csv(paths["table"])
    assert list(table.columns[:2]) == ["plane", "label"]
    assert table[["plane", "label", "area_px"]].values.tolist() == [[0, 1, 9], [1, 1, 4], [1, 2, 16]]
    assert list(table["mean_intensity"]) == [3.0, 5.0, 5.0] and list(table["area_um2"]) == [2.25, 1.0, 4.0]
    assert json.loads(paths["params"].read_text()) == {"cells": 3, "cells_per_plane": [1, 2]}
    with pytest.raises(ValueError, match=r"multi-page \.tif"):
        io.write_results(tmp_path, "p", labels, labels_format=".png")
    with pytest.raises(ValueError, match="differ in shape"):
        io.write_results(tmp_path, "q", labels, image[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_cells.csv", "s_masks.tif", "s_params.json"]


def test_bad_labels_are_refused_before_any_file_is_written(tmp_path):
    """-1 would be written as 65535 and 1000.5 as 1000; a refusal after the labels file
    was written would leave a partial export that a retry then refuses as existing."""
    labels = np.zeros((8, 8), np.int32)
    labels[1:4, 1:4] = 1
    with pytest.raises(ValueError, match=">= 0"):
        io.write_results(tmp_path, "neg", np.where(labels == 1, -1, 0))
    with pytest.raises(ValueError, match="whole numbers"):
        io.write_results(tmp_path, "half", labels * 1000.5)
    with pytest.raises(ValueError, match=">= 0"):
        io.write_labels(tmp_path / "neg.tif", -labels[None])  # a stack, as napari's writer gets
    assert list(tmp_path.iterdir()) == []
    io.write_labels(tmp_path / "whole.tif", labels * 2.0)  # whole floats are ids
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "whole.tif"), labels * 2)


def test_cell_table_leaves_nan_pixels_out(tmp_path):
    """One NaN pixel made its cell's mean NaN and the bright/dim cut NaN, so every cell read
    dim; now NaN pixels are left out, and a cell with none finite gets no class."""
    labels = np.zeros((12, 12), np.int32)
    labels[0:3, 0:3], labels[4:7, 4:7], labels[8:11, 8:11] = 1, 2, 3
    image = np.where(labels == 1, 1.0, np.where(labels == 2, 10.0, 0.0))
    image[labels == 3] = np.nan
    image[4, 4] = np.nan  # one NaN pixel in cell 2
    table = io.write_results(tmp_path, "n", labels, image)["table"]
    t = pd.read_csv(table)
    assert list(t["mean_intensity"][:2]) == [1.0, 10.0] and list(t["total_intensity"][:2]) == [9.0, 80.0]
    assert np.isnan(t["mean_intensity"][2]) and np.isnan(t["total_intensity"][2])
    assert list(t["bright"][:2]) == [False, True] and pd.isna(t["bright"][2])


def test_segment_files_yields_progress_per_file_and_refuses_before_work(lesson_tif, tmp_path):
    from napari_cellseg.batch import iter_segment_files
    from napari_cellseg.progress import Progress, drain

    second = tmp_path / "second.tif"
    second.write_bytes(lesson_tif.read_bytes())
    steps = []
    out = tmp_path / "out"
    results = drain(iter_segment_files([lesson_tif, second], out, "classic"), steps.append)
    assert steps == [Progress(0, 2, "files", "0 of 2 files done"), Progress(1, 2, "files"),
                     Progress(2, 2, "files")]
    assert [(p.name, n) for p, n in results] == [("lesson.tif", 8), ("second.tif", 8)]
    assert steps[1].text() == "1 / 2 files"
    (out / "second_cells.csv").unlink()  # the lesson's outputs still exist: refused, nothing read
    gen = iter_segment_files([second, lesson_tif], out, "classic")
    with pytest.raises(FileExistsError, match=r"lesson_masks\.tif"):
        next(gen)
    assert not (out / "second_cells.csv").exists()
    # Names that differ only in case write the same files on macOS and Windows: refused.
    (tmp_path / "other").mkdir()
    upper = tmp_path / "other" / "LESSON.tif"
    upper.write_bytes(lesson_tif.read_bytes())
    with pytest.raises(ValueError, match="share the name"):
        next(iter_segment_files([lesson_tif, upper], tmp_path / "out2", "classic"))
    assert not (tmp_path / "out2").exists()


def test_model_help_names_the_built_in_models(capsys):
    from napari_cellseg import cli

    for command in ("segment", "segment-large"):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, "--help"])
        assert stop.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        # One image or a batch: the choice by look; block-wise: the default model.
        default = "default: 'auto'" if command == "segment" else "default: dense_tcells_multiscale"
        assert default in text
        assert "multiscale_nuclei for nuclei in a DNA stain" in text and "dense_tcells_x2" in text
