"""Automatic scale and the cell diameter as the unit a user gives (issue 15, step 1)."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

import napari_cellseg as ncs
from napari_cellseg.core.preprocess import rescale
from napari_cellseg.model.store import resolve_model
from napari_cellseg.scale import estimate_scale

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
TRUE_PIXEL_SIZE = 0.5  # µm, the synthetic tissue's (cells 7.5 µm across, as the model's)


@pytest.fixture(scope="module")
def tissue():
    image = tifffile.imread(SAMPLES / "tissue.tif")[:320, :320].astype(np.float32)
    labels = tifffile.imread(SAMPLES / "tissue_masks.tif")[:320, :320]
    return image, labels


@pytest.mark.parametrize("look", ["whole_cell", "tissue"])
@pytest.mark.parametrize("drawn", [0.5, 1.0, 2.0])
def test_auto_scale_recovers_a_known_scale(look, drawn):
    """Synthetic cells drawn `drawn` x their size at 0.5 µm/px (the conventions of
    benchmarks/generalization.py), so the truth is exact: the measured pixel size is within
    15 % of 0.5 / drawn µm. (The sample tissue
    crop rescaled reads 16-19 % large at every scale: a bias of that image's cells, not of
    the scale, measured with the whole sample too, 2026-11-23.)"""
    from napari_cellseg.core import synthetic as syn

    net, info = resolve_model(None)
    side = round(256 * max(drawn, 1))
    if look == "whole_cell":
        # radius 9 px: this look's cells at 0.5 µm/px (benchmarks/generalization.py)
        x = syn.make_whole_cell_image(seed=3, shape=(side, side), cell_radius=9.0 * drawn).image
    else:
        x = syn.make_tissue_image(seed=3, shape=(side, side), cell_radius=7.5 * drawn, blur=drawn).image
    estimate = estimate_scale(x, net, info, "cpu")
    # Drawn at `drawn` x, the pixels are `drawn` x smaller: the estimate must follow.
    assert estimate.measured_pixel_size * drawn == pytest.approx(TRUE_PIXEL_SIZE, rel=0.15)
    assert estimate.cell_diameter_px / drawn == pytest.approx(15.0, rel=0.15)
    # Applied: the model's scale at 1x, the measured one at 0.5x and 2x.
    assert estimate.zoom == (1.0 if drawn == 1 else pytest.approx(1 / drawn, rel=0.15))
    assert len(estimate.trials) >= 5


def test_auto_scale_leaves_an_image_near_the_model_scale_as_it_is(tissue):
    from napari_cellseg.scale import KEEP

    image, _ = tissue
    net, info = resolve_model(None)
    x = rescale(image, 1.2)  # 20 % off: inside the range the network works over
    estimate = estimate_scale(x, net, info, "cpu")
    assert 1 / KEEP < estimate.measured_zoom < KEEP and estimate.measured_zoom != 1.0
    assert estimate.zoom == 1.0 and estimate.pixel_size == info.pixel_size and estimate.kept_model_scale
    assert estimate.measured_pixel_size == pytest.approx(info.pixel_size * estimate.measured_zoom)
    # the cells' size is still reported as measured
    assert estimate.cell_diameter_px == pytest.approx(15.0 * 1.2, rel=0.15)
    auto, at_model = ncs.predict(x, pixel_size="auto", device="cpu"), ncs.predict(x, "model", device="cpu")
    assert auto.scale is not None and at_model.scale is None and at_model.pixel_size is None
    np.testing.assert_array_equal(auto.segment(), at_model.segment())


def test_a_zoom_on_the_keep_bound_keeps_the_model_scale():
    from napari_cellseg.scale import KEEP, STEP, applied_zoom

    reach = np.sqrt(STEP)  # how far the size may move the zoom from its rung
    # From rung 1, from rung 2 and from rung 0.5 the refinement's limit lands on the bound.
    for measured in (reach, 1 / reach, 2.0 / reach, 0.5 * reach, KEEP, 1 / KEEP):
        assert applied_zoom(measured) == 1.0
    assert applied_zoom(1.5) == 1.5 and applied_zoom(0.65) == 0.65


def test_auto_scale_through_predict_segments_a_rescaled_image(tissue):
    image, labels = tissue
    # The same cells at 0.25 µm/px, interpolated as optics would draw them (a blocky
    # pixel-doubled copy measures 0.288 µm: the size of its cells reads 15 % small).
    big = rescale(image, 2.0)
    big_labels = np.kron(labels, np.ones((2, 2), labels.dtype))
    # The 1x specialist, which needs the scale (the default model travels: test_model.py).
    # The estimate is the default: an array carries no pixel size.
    auto = ncs.predict(big, model="dense_tcells", device="cpu")
    assert auto.scale is not None and auto.pixel_size == auto.scale.pixel_size
    assert auto.pixel_size == pytest.approx(0.25, rel=0.2)  # the sample crop's cells read 16-19 % small
    ap_auto = ncs.evaluate(big_labels, auto.segment()).ap
    ap_unscaled = ncs.evaluate(big_labels, ncs.segment(big, "model", model="dense_tcells", device="cpu")).ap
    assert ap_auto >= 0.9
    assert ap_auto > ap_unscaled + 0.2


def test_cell_diameter_and_pixel_size_give_the_same_cells(tissue):
    image, _ = tissue
    _, info = resolve_model(None)
    diameter_px = 12.0
    by_diameter = ncs.predict(image, cell_diameter_px=diameter_px, device="cpu")
    by_pixel_size = ncs.predict(image, pixel_size=info.cell_diameter_um / diameter_px, device="cpu")
    assert by_diameter.pixel_size == pytest.approx(info.cell_diameter_um / 12.0)  # 0.625 for 7.5 µm cells
    np.testing.assert_array_equal(by_diameter.segment(), by_pixel_size.segment())
    # In µm with the image's pixel size: 6 µm cells in 0.5 µm pixels are the same 12 px.
    by_um = ncs.predict(image, pixel_size=0.5, cell_diameter_um=6.0, device="cpu")
    assert by_um.pixel_size == pytest.approx(by_diameter.pixel_size)
    np.testing.assert_array_equal(by_um.segment(), by_diameter.segment())


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"pixel_size": "big"}, "'auto'"),
    ({"pixel_size": 0.5, "cell_diameter_px": 10}, "not both"),
    ({"cell_diameter_px": 0}, "cell_diameter_px"),
    ({"cell_diameter_px": float("nan")}, "finite"),
    ({"cell_diameter_um": 6.0}, "needs the image's pixel size"),  # "auto" is no pixel size
    ({"pixel_size": "model", "cell_diameter_um": 6.0}, "needs the image's pixel size"),
    ({"pixel_size": 0.5, "cell_diameter_um": 6.0, "cell_diameter_px": 12}, "in µm or in px, not both"),
    ({"pixel_size": 0.5, "cell_diameter_um": 0}, "cell_diameter_um must be"),
    ({"cell_diameter_px": 1000}, "a cell diameter of 1000 px means rescaling the image by 0.01"),
    ({"pixel_size": 0.5, "cell_diameter_um": 500}, "check the diameter \\(and its unit\\)"),  # 1000 px
])
def test_scale_arguments_are_checked(tissue, kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        ncs.predict(tissue[0], device="cpu", **kwargs)


def test_nothing_to_measure_is_segmented_at_the_model_scale_with_a_warning(caplog):
    blank = np.zeros((256, 256), np.float32)
    net, info = resolve_model(None)
    with pytest.raises(ValueError, match="constant"):
        estimate_scale(blank, net, info, "cpu")
    # The default (no pixel size) must not fail on a blank frame of a batch: no cells, in words.
    with caplog.at_level("WARNING", logger="napari_cellseg"):
        prediction = ncs.predict(blank, device="cpu")
    assert prediction.scale is None and prediction.pixel_size is None
    assert prediction.segment().max() == 0
    assert "taken to be at the model's pixel size" in caplog.text


def test_an_image_too_small_for_a_trial_at_the_model_scale_is_not_estimated(tissue):
    """Under 32 px a side only the enlarging rungs have a trial crop, and one of them always
    won: a crop of a few cells was enlarged 1.4-5.7x whatever its true scale. It is taken at
    the model's scale now, and the prediction says why (the widgets show its warnings)."""
    net, info = resolve_model(None)
    small = tissue[0][:24, :30]
    with pytest.raises(ValueError, match=r"\(24 x 30 px\) is too small to estimate its scale"):
        estimate_scale(small, net, info, "cpu")
    prediction = ncs.predict(small, device="cpu", model=None)
    assert prediction.scale is None and prediction.pixel_size is None
    assert prediction.grid_image.shape == (24, 30)  # not enlarged
    assert any("too small to estimate its scale" in w for w in prediction.warnings)
    # From 32 px on, the model's own rung has its trial: estimated as before.
    assert estimate_scale(tissue[0][:32, :40], net, info, "cpu").trials[0][0] == 1.0


def test_a_prediction_carries_the_warnings_it_logged(caplog):
    """What the log says of an image is also on its Prediction: the viewer shows no log."""
    noise = np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
    with caplog.at_level("WARNING", logger="napari_cellseg"):
        prediction = ncs.predict(noise, device="cpu", model="dense_tcells_multiscale")
    assert len(prediction.warnings) == 2
    assert "looks like noise" in prediction.warnings[0] and "model's pixel size" in prediction.warnings[0]
    assert prediction.warnings[1].startswith("the network is unsure about most of this image")
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert logged == prediction.warnings
    # An image with cells at a given scale: nothing to say.
    assert ncs.predict(tifffile.imread(SAMPLES / "tissue.tif")[:128, :128], 0.5, device="cpu",
                       model="dense_tcells_multiscale").warnings == []


def test_a_strip_gets_several_trial_crops_at_every_zoom(tissue, monkeypatch):
    """A 1040 x 233 px strip (the dense set's test strips' shape) used to get one trial
    crop: the windows were of the smallest zoom's side (512 px) for every zoom."""
    import napari_cellseg.model.inference as inference

    image = np.tile(tissue[0], (1, 4))[:233, :1040]
    net, info = resolve_model(None)
    shapes = []
    real = inference.predict_probabilities
    monkeypatch.setattr(inference, "predict_probabilities",
                        lambda net, crop, **kw: shapes.append(crop.shape) or real(net, crop, **kw))
    estimate_scale(image, net, info, "cpu")
    # 128 px on the model's grid at zooms 1, 2 and 4 (windows of 128, 64, 32 px): 3 each,
    # side by side. Windows of 512 px for every zoom fit at most twice in 1040 px.
    assert shapes.count((128, 128)) == 9
    # the 0.5's 256 px windows (116 x 128 on the grid) and the 0.25's 512 px ones
    assert shapes.count((116, 128)) >= 2 and shapes.count((58, 128)) >= 1


def test_a_crop_of_background_does_not_vote():
    from napari_cellseg.scale import pooled_confidence

    cells = np.zeros((3, 10, 10), np.float32)
    cells[0, :5] = 0.9  # half the crop: seed 0.9, background 0.1
    cells[2, :5] = 0.1
    cells[2, 5:] = 1.0  # the other half: sure background
    background = np.zeros((3, 10, 10), np.float32)
    background[2] = 1.0
    background[1, 0, 0], background[2, 0, 0] = 0.6, 0.4  # 1 % cell: below MIN_CELL_SHARE
    # Over the cell pixels only: 0.9 (50 px), the background crop left out (not 0.45).
    assert pooled_confidence([cells, background]) == pytest.approx(0.9)
    two = cells.copy()
    two[0, :5], two[1, :5], two[2, :5] = 0.3, 0.5, 0.2  # called cell, likeliest class 0.5
    assert pooled_confidence([cells, two]) == pytest.approx((50 * 0.9 + 50 * 0.5) / 100)
    assert pooled_confidence([background]) == 0.0



def test_cli_auto_pixel_size_and_cell_diameter(tmp_path, capsys):
    import json

    from napari_cellseg.cli import main

    image = tmp_path / "crop.tif"
    tifffile.imwrite(image, tifffile.imread(SAMPLES / "tissue.tif")[:320, :320])
    # A TIFF without a pixel size: estimated by default, as with --pixel-size auto.
    assert main(["segment", str(image), "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "crop_params.json").read_text())
    assert record["pixel_size_from"] == "estimated from the image" and not record["pixel_size_given"]
    assert record["pixel_size_um"] == pytest.approx(0.5, rel=0.15)
    assert main(["segment", str(image), "--out", str(tmp_path / "a2"), "--pixel-size", "auto"]) == 0
    assert json.loads((tmp_path / "a2" / "crop_params.json").read_text())["pixel_size_um"] == record["pixel_size_um"]
    # --pixel-size model: the model's scale, as an image without one had it until 2026-11-23.
    assert main(["segment", str(image), "--out", str(tmp_path / "m"), "--pixel-size", "model"]) == 0
    record = json.loads((tmp_path / "m" / "crop_params.json").read_text())
    assert record["pixel_size_from"] == "the model's pixel size" and record["pixel_size_um"] == 0.5
    assert main(["segment", str(image), "--out", str(tmp_path / "c"), "--method", "classic",
                 "--pixel-size", "model"]) == 2
    assert "needs the unet method" in capsys.readouterr().err
    assert main(["segment", str(image), "--out", str(tmp_path / "d"), "--cell-diameter", "15"]) == 0
    record = json.loads((tmp_path / "d" / "crop_params.json").read_text())
    model_um = resolve_model(None)[1].cell_diameter_um  # the model's typical cell (µm)
    assert record["pixel_size_um"] == pytest.approx(model_um / 15)  # 0.5 for 7.5 µm cells 15 px across
    assert record["pixel_size_from"] == "cell diameter 15.0 px"
    assert main(["segment", str(image), "--out", str(tmp_path / "x"), "--cell-diameter", "15",
                 "--pixel-size", "0.5"]) == 2
    assert "without --pixel-size" in capsys.readouterr().err


def test_a_batch_says_which_image_got_which_scale_and_keeps_its_warnings(tmp_path, capsys):
    import json

    from napari_cellseg.batch import recorded_warnings
    from napari_cellseg.cli import main

    tissue = tifffile.imread(SAMPLES / "tissue.tif")
    tifffile.imwrite(tmp_path / "crop.tif", tissue[:320, :320])
    tifffile.imwrite(tmp_path / "tiny.tif", tissue[:24, :24])
    paths = [tmp_path / "crop.tif", tmp_path / "tiny.tif"]
    out = tmp_path / "out"
    assert main(["segment", *map(str, paths), "--out", str(out), "--model", "dense_tcells_multiscale"]) == 0
    lines = capsys.readouterr().out.splitlines()
    crop = json.loads((out / "crop_params.json").read_text())
    # Near the model's scale: kept at 0.5 µm, and what was measured is recorded and said.
    assert crop["pixel_size_um"] == 0.5 and crop["measured_pixel_size_um"] == pytest.approx(0.5, rel=0.3)
    assert crop["measured_pixel_size_um"] != 0.5 and "warnings" not in crop
    assert lines[0].startswith("crop.tif: ") and (f"pixel size 0.5 µm, the model's: estimated from the image as "
                                                  f"{crop['measured_pixel_size_um']:.3g} µm") in lines[0]
    tiny = json.loads((out / "tiny_params.json").read_text())
    assert tiny["pixel_size_from"] == "the model's pixel size (no estimate used: see 'warnings')"
    assert "too small to estimate its scale" in tiny["warnings"][0]
    assert lines[1].startswith("tiny.tif: ") and "the model's pixel size: no estimate used" in lines[1]
    assert f"{len(tiny['warnings'])} warning" in lines[1] and "see tiny_params.json" in lines[1]
    assert recorded_warnings(paths, out) == {paths[1]: tiny["warnings"]}


def test_a_stack_keeps_its_cell_diameter_on_every_plane(tissue):
    from napari_cellseg.pipeline import iter_predict_planes
    from napari_cellseg.progress import drain

    stack = np.stack([tissue[0][:128, :128], tissue[0][128:256, :128]])
    preds = drain(iter_predict_planes(stack, device="cpu", cell_diameter_px=15.0))
    assert [p.pixel_size for p in preds] == [pytest.approx(resolve_model(None)[1].cell_diameter_um / 15)] * 2
    assert all(p.scale is None for p in preds)


def test_an_estimate_beyond_the_memory_falls_back_to_the_model_scale(tissue, monkeypatch, caplog):
    import napari_cellseg.scale as scale
    from napari_cellseg.core import validate

    image = tissue[0][:256, :256].astype(np.float32)
    fake = scale.ScaleEstimate(pixel_size=2.0, zoom=4.0, cell_diameter_px=3.75, confidence=0.7,
                               trials=((4.0, 0.7),), measured_zoom=4.0)
    monkeypatch.setattr(scale, "estimate_scale", lambda *a, **k: fake)
    # Room for the model's grid (256 x 256) and 3 more, not for the 4x zoom's (1024 x 1024).
    monkeypatch.setattr(validate, "available_memory", lambda: 4 * 256 * 256 * validate.BYTES_PER_GRID_PIXEL)
    with caplog.at_level("WARNING", logger="napari_cellseg"):
        prediction = ncs.predict(image, device="cpu")
    assert prediction.scale is None and prediction.pixel_size is None
    assert prediction.probabilities.shape[1:] == (256, 256)
    assert "needs about" in caplog.text and "taken to be at the model's pixel size instead" in caplog.text
    assert len(prediction.warnings) == 1 and "needs about" in prediction.warnings[0]  # shown in the viewer
    # A pixel size the user gave is not second-guessed: the same need is an error.
    with pytest.raises(MemoryError, match="needs about"):
        ncs.predict(image, 2.0, device="cpu")


def test_window_variances_equal_numpy_per_window():
    from napari_cellseg.scale import _window_variances

    image = np.random.default_rng(2).random((233, 301)) * 100
    for side in (32, 64, 128, 256):  # 256 > 233: the windows are cut to the image's height
        step = min(side, 233) // 2
        rows, cols = np.arange(0, max(233 - side, 0) + 1, step), np.arange(0, 301 - side + 1, step)
        expected = [[np.var(image[r : r + side : 4, c : c + side : 4]) for c in cols] for r in rows]
        np.testing.assert_allclose(_window_variances(image, rows, cols, side), expected, rtol=1e-9)


def _tiny_nuclei(seed=700, side=256):
    """Filled nuclei drawn at a quarter of their size at 0.5 µm/px (benchmarks/
    generalization.py's nuclei look at 0.25x): real cells the rung 4 is for."""
    from scipy import ndimage as ndi

    from napari_cellseg.core import synthetic as syn

    rng = np.random.default_rng(seed)
    nuclei = syn.make_whole_cell_image(seed=seed, shape=(side, side), cell_radius=4.0, density=0.6).nucleus_labels
    gain = np.concatenate([[0.0], rng.uniform(0.3, 1.0, int(nuclei.max()))])
    image = ndi.gaussian_filter(gain[nuclei], 0.25) + 0.05
    return (rng.poisson(image * 100) / 100 + rng.normal(0, 0.01, image.shape)).astype(np.float32)


def test_noise_enlarged_4x_reads_as_cells_and_tiny_nuclei_do_not():
    """scale.reads_noise: a calm window of noise, enlarged 4x, is mostly 'cell' to the
    network (so the whole image would become thousands of false cells), a calm window of
    tiny real nuclei is not."""
    from napari_cellseg.scale import reads_noise

    net, info = resolve_model(None)
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    for noise in (rng.poisson(50, (256, 256)).astype(np.float32),
                  ndi.gaussian_filter(rng.normal(size=(256, 256)), 0.7).astype(np.float32)):
        assert reads_noise(noise, 4.0, net, info, "cpu")
    assert not reads_noise(_tiny_nuclei(), 4.0, net, info, "cpu")


def test_a_rung_that_reads_noise_is_passed_over(monkeypatch):
    """Tiny nuclei are likeliest at rung 4; were it reading noise, the estimate takes the
    next rung and says which it passed over; a ladder of such rungs only is refused."""
    from napari_cellseg import scale

    net, info = resolve_model(None)
    image = _tiny_nuclei()
    honest = estimate_scale(image, net, info, "cpu")
    assert max(honest.trials, key=lambda t: t[1])[0] == 4.0 and honest.noise_zooms == ()
    assert honest.zoom > 2.8  # near the truth, 4
    checked = []
    monkeypatch.setattr(scale, "reads_noise", lambda image, zoom, *a, **k: checked.append(zoom) or True)
    passed_over = estimate_scale(image, net, info, "cpu")
    assert checked == [4.0]  # only rungs that enlarge 4x or more are checked
    assert passed_over.noise_zooms == (4.0,) and passed_over.zoom < 2 * np.sqrt(2) + 1e-9
    assert (honest.rung, passed_over.rung) == (4.0, 2.0)
    with pytest.raises(ValueError, match="reads the image's background noise as cells"):
        estimate_scale(image, net, info, "cpu", zooms=(4.0,))
