"""One scale for a batch of one experiment's images (``same_scale``, the CLI's
``--same-scale``, the Batch widget's "One scale for all images")."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

from napari_cellseg import pipeline
from napari_cellseg.batch import iter_segment_files
from napari_cellseg.choose import NUCLEAR_MODEL
from napari_cellseg.model.registry import DEFAULT_MODEL
from napari_cellseg.progress import drain
from napari_cellseg.scale import ScaleEstimate, combine

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def tissue():
    return tifffile.imread(SAMPLES / "tissue.tif")[:128, :128].astype(np.float32)


def _estimate(measured: float, base: float = 1.0) -> ScaleEstimate:
    """An estimate of the default model's grid (0.5 µm) that measured ``measured``."""
    from napari_cellseg.scale import applied_zoom

    zoom = base * applied_zoom(measured / base)
    return ScaleEstimate(pixel_size=zoom * 0.5, zoom=zoom, cell_diameter_px=15.0 / measured, confidence=0.8,
                         trials=((1.0, 0.8),), measured_zoom=measured, base_zoom=base)


def _fake_readings(monkeypatch, readings: dict):
    """``pipeline.measure_scale`` answering ``readings[file's first pixel]``: (measured
    zoom or None, model name); the files are told apart by their first pixel."""
    calls = []

    def measure(image, model=None, device="auto", **_):
        measured, name = readings[int(image[0, 0])]
        calls.append(int(image[0, 0]))
        return (None if measured is None else measured * 0.5, None if measured is None else _estimate(measured),
                name, None)

    monkeypatch.setattr(pipeline, "measure_scale", measure)
    return calls


def _files(tmp_path, tissue, n=3, **imwrite):
    paths = []
    for k in range(n):
        image = tissue.copy()
        image[0, 0] = k  # the fake reading's key
        paths.append(tmp_path / f"im{k}.tif")
        tifffile.imwrite(paths[-1], image, **imwrite)
    return paths


def _record(out, path) -> dict:
    return json.loads((out / f"{Path(path).stem}_params.json").read_text())


def test_combine_takes_the_median_and_keeps_the_model_scale_near_it():
    # The stray 1.45 is outvoted: the median measured zoom 0.52 is applied.
    assert combine([_estimate(0.5), _estimate(1.45), _estimate(0.52)]) == (pytest.approx(0.26), 0.52)
    # A median within a factor √2 of the model's scale leaves the images as they are.
    assert combine([_estimate(1.2), _estimate(0.69), _estimate(1.1)]) == (0.5, 1.1)
    assert combine([_estimate(0.4), _estimate(0.6)]) == (pytest.approx(0.25), pytest.approx(0.5))
    with pytest.raises(ValueError, match="different models"):
        combine([_estimate(0.5), _estimate(1.0, base=2.0)])
    with pytest.raises(ValueError, match="no scale estimate"):
        combine([])


def test_a_batch_at_one_scale_gets_the_median_of_its_estimates(tmp_path):
    """Real estimates on cells drawn at twice the model's size (true pixel size 0.25 µm):
    every image is segmented at the median, and says so."""
    from napari_cellseg.core import synthetic as syn

    paths, images = [], []
    for seed in (500, 501, 502):
        images.append(syn.make_whole_cell_image(seed=seed, shape=(384, 384), cell_radius=18.0).image
                      .astype(np.float32))
        paths.append(tmp_path / f"w{seed}.tif")
        tifffile.imwrite(paths[-1], images[-1])
    readings = [pipeline.measure_scale(image, None, "cpu") for image in images]
    names = [r[2] for r in readings]
    model = max(dict.fromkeys(names), key=lambda n: (names.count(n), n == DEFAULT_MODEL))
    expected, _ = combine([r[1] for r in readings if r[2] == model])
    assert expected == pytest.approx(0.25, rel=0.15)
    out = tmp_path / "out"
    counts = drain(iter_segment_files(paths, out, device="cpu", same_scale=True))
    for (path, n), image in zip(counts, images, strict=True):
        record = _record(out, path)
        assert record["pixel_size_um"] == expected and not record["pixel_size_given"]
        assert record["pixel_size_from"] == "estimated from the batch: the median of 3 images' estimates"
        assert record["batch_scale"]["measured_on"] == [p.name for p, r in zip(paths, readings, strict=True)
                                                        if r[2] == model]
        assert record["model"]["name"] == model and record["request"]["same_scale"] is True
        labels = tifffile.imread(out / f"{path.stem}_masks.tif")
        np.testing.assert_array_equal(labels, pipeline.predict(image, expected, model, "cpu").segment())
        assert n == labels.max() > 10


def test_a_stray_estimate_is_outvoted_and_each_image_runs_at_the_batch_scale(tmp_path, tissue, monkeypatch):
    paths = _files(tmp_path, tissue)
    calls = _fake_readings(monkeypatch, {0: (0.5, DEFAULT_MODEL), 1: (0.52, DEFAULT_MODEL),
                                         2: (1.0, DEFAULT_MODEL)})
    out = tmp_path / "out"
    drain(iter_segment_files(paths, out, device="cpu", same_scale=True))
    assert calls == [0, 1, 2]
    for path in paths:
        record = _record(out, path)
        assert record["pixel_size_um"] == pytest.approx(0.26)  # the stray 1.0 (0.5 µm) is outvoted
        assert record["batch_scale"]["measured_um"] == [0.25, 0.26, 0.5]
    image = tifffile.imread(paths[2])
    np.testing.assert_array_equal(tifffile.imread(out / "im2_masks.tif"),
                                  pipeline.predict(image, 0.26, DEFAULT_MODEL, "cpu").segment())


def test_the_model_most_images_chose_runs_on_all_of_them(tmp_path, tissue, monkeypatch):
    paths = _files(tmp_path, tissue)
    _fake_readings(monkeypatch, {0: (1.0, NUCLEAR_MODEL), 1: (1.0, DEFAULT_MODEL), 2: (0.9, NUCLEAR_MODEL)})
    drain(iter_segment_files(paths, tmp_path / "out", device="cpu", same_scale=True))
    for path in paths:
        record = _record(tmp_path / "out", path)
        assert record["model"]["name"] == NUCLEAR_MODEL and record["model"]["sha256"]
        # Only the nuclear model's estimates vote: the median of 1.0 and 0.9, kept at 1.
        assert record["batch_scale"]["measured_on"] == ["im0.tif", "im2.tif"] and record["pixel_size_um"] == 0.5
    # ... and the nuclear model is what ran, on every image (the one it would choose for itself
    # on this tissue, the dense look, is the default)
    image = tifffile.imread(paths[1])
    nuclear = pipeline.predict(image, 0.5, NUCLEAR_MODEL, "cpu").segment()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "im1_masks.tif"), nuclear)
    assert not np.array_equal(nuclear, pipeline.predict(image, 0.5, DEFAULT_MODEL, "cpu").segment())
    # Equal votes: the default model.
    _fake_readings(monkeypatch, {0: (1.0, NUCLEAR_MODEL), 1: (1.0, DEFAULT_MODEL)})
    drain(iter_segment_files(paths[:2], tmp_path / "tie", device="cpu", same_scale=True))
    assert _record(tmp_path / "tie", paths[0])["model"]["name"] == DEFAULT_MODEL


def test_files_with_their_own_pixel_size_keep_it(tmp_path, tissue, monkeypatch):
    """Only the images whose scale would be estimated share the batch's; a file that states
    its pixel size is zoomed by it (pixel_size None), unless "auto" is asked for."""
    paths = _files(tmp_path, tissue, 2)
    tifffile.imwrite(paths[1], tifffile.imread(paths[1]), imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"unit": "um"})
    calls = _fake_readings(monkeypatch, {0: (0.5, DEFAULT_MODEL), 1: (0.8, DEFAULT_MODEL)})
    drain(iter_segment_files(paths, tmp_path / "out", device="cpu", same_scale=True))
    assert calls == [0]
    calibrated = _record(tmp_path / "out", paths[1])
    assert calibrated["pixel_size_um"] == pytest.approx(0.4) and calibrated["pixel_size_from"] == "file metadata"
    assert "batch_scale" not in calibrated and "scale_from" not in calibrated
    assert _record(tmp_path / "out", paths[0])["pixel_size_um"] == 0.25
    # "auto": every image's zoom is the batch's, and the file's size still measures its µm.
    drain(iter_segment_files(paths, tmp_path / "auto", pixel_size="auto", device="cpu", same_scale=True))
    assert calls == [0, 0, 1]
    calibrated = _record(tmp_path / "auto", paths[1])
    assert calibrated["pixel_size_um"] == pytest.approx(0.4)
    assert calibrated["scale_pixel_size_um"] == pytest.approx(0.325)  # the median of 0.25 and 0.4
    assert calibrated["scale_from"].startswith("estimated from the batch")


def test_a_resumed_batch_keeps_the_scale_its_finished_images_had(tmp_path, tissue, monkeypatch):
    paths = _files(tmp_path, tissue)
    _fake_readings(monkeypatch, {0: (0.5, DEFAULT_MODEL), 1: (0.5, DEFAULT_MODEL), 2: (0.6, DEFAULT_MODEL)})
    out = tmp_path / "out"
    drain(iter_segment_files(paths, out, device="cpu", same_scale=True))
    settled = _record(out, paths[0])["batch_scale"]
    (out / "im1_masks.tif").unlink()  # stopped mid-write: redone on resume
    calls = _fake_readings(monkeypatch, {})  # nothing is read again
    drain(iter_segment_files(paths, out, device="cpu", same_scale=True, resume=True))
    assert calls == [] and _record(out, paths[1])["batch_scale"] == settled
    assert (out / "im1_masks.tif").exists()
    # Without same_scale it is another request: refused, not mixed with the old outputs.
    with pytest.raises(FileExistsError):
        drain(iter_segment_files(paths, out, device="cpu", resume=True))


def test_a_batch_with_nothing_to_measure_estimates_each_image(tmp_path, tissue, monkeypatch, caplog):
    paths = _files(tmp_path, tissue, 2)
    _fake_readings(monkeypatch, {0: (None, DEFAULT_MODEL), 1: (None, DEFAULT_MODEL)})
    with caplog.at_level(logging.WARNING, "napari_cellseg.batch"):
        drain(iter_segment_files(paths, tmp_path / "out", device="cpu", same_scale=True))
    assert "none of the 2 images read shows cells to measure" in caplog.text
    record = _record(tmp_path / "out", paths[0])
    assert record["batch_scale"] is None and record["pixel_size_from"] == "estimated from the image"
    # Resumed (a file added, one redone) when the sample would now measure: each image still
    # gets its own estimate, as the finished ones had.
    image = tissue.copy()
    image[0, 0] = 2
    paths.append(tmp_path / "new.tif")
    tifffile.imwrite(paths[-1], image)
    (tmp_path / "out" / "im1_masks.tif").unlink()
    calls = _fake_readings(monkeypatch, {0: (0.5, DEFAULT_MODEL), 1: (0.5, DEFAULT_MODEL), 2: (0.5, DEFAULT_MODEL)})
    drain(iter_segment_files(paths, tmp_path / "out", device="cpu", same_scale=True, resume=True))
    assert calls == []
    for path in paths[1:]:
        record = _record(tmp_path / "out", path)
        assert record["batch_scale"] is None and record["pixel_size_from"] == "estimated from the image"


def test_a_batch_scale_an_image_cannot_take_is_refused_in_words(tmp_path, tissue, monkeypatch):
    paths = _files(tmp_path, tissue, 2)
    small = tissue[:40, :40].copy()
    small[0, 0] = 1
    tifffile.imwrite(paths[1], small)  # 40 px shrunk 8x: 5 px, below the 8 px the pipeline needs
    _fake_readings(monkeypatch, {0: (0.125, DEFAULT_MODEL), 1: (None, DEFAULT_MODEL)})
    with pytest.raises(ValueError, match=r"im1.tif: the batch's one scale \(0.0625 µm per pixel, the median "
                                         r"of 1 images' estimates\) cannot be applied to this image: .*below 8 px"):
        drain(iter_segment_files(paths, tmp_path / "out", device="cpu", same_scale=True))


@pytest.mark.parametrize("kwargs", [{"pixel_size": 0.5}, {"pixel_size": "model"}, {"cell_diameter_px": 20},
                                    {"method": "classic"}])
def test_same_scale_is_refused_where_nothing_is_estimated(tmp_path, tissue, kwargs):
    paths = _files(tmp_path, tissue, 1)
    with pytest.raises(ValueError, match="same_scale estimates one scale"):
        drain(iter_segment_files(paths, tmp_path / "out", device="cpu", same_scale=True, **kwargs))
    assert not (tmp_path / "out").exists()


def test_cli_same_scale(tmp_path, tissue, monkeypatch, capsys):
    from napari_cellseg.cli import main

    paths = _files(tmp_path, tissue, 2)
    _fake_readings(monkeypatch, {0: (0.5, DEFAULT_MODEL), 1: (0.5, DEFAULT_MODEL)})
    assert main(["segment", *map(str, paths), "--out", str(tmp_path / "out"), "--same-scale",
                 "--device", "cpu"]) == 0
    assert _record(tmp_path / "out", paths[1])["pixel_size_um"] == 0.25
    for extra in (["--pixel-size", "0.5"], ["--cell-diameter", "20"], ["--method", "classic"]):
        assert main(["segment", str(paths[0]), "--out", str(tmp_path / "x"), "--same-scale", *extra]) == 2
        assert "--same-scale estimates one scale" in capsys.readouterr().err
    assert main(["segment", "--zarr", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "y"),
                 "--same-scale"]) == 2
    assert "--same-scale goes with images, not --zarr" in capsys.readouterr().err
