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


@pytest.mark.parametrize("drawn", [0.5, 1.0, 2.0])
def test_auto_scale_recovers_a_known_scale(tissue, drawn):
    image, _ = tissue
    net, info = resolve_model(None)
    x = rescale(image, drawn) if drawn != 1 else image
    estimate = estimate_scale(x, net, info, "cpu")
    # Drawn at `drawn` x, the pixels are `drawn` x smaller: the estimate must follow.
    assert estimate.pixel_size * drawn == pytest.approx(TRUE_PIXEL_SIZE, rel=0.15)
    assert estimate.cell_diameter_px / drawn == pytest.approx(15.0, rel=0.15)
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
    auto, default = ncs.predict(x, pixel_size="auto", device="cpu"), ncs.predict(x, device="cpu")
    np.testing.assert_array_equal(auto.segment(), default.segment())


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
    auto = ncs.predict(big, pixel_size="auto", model="dense_tcells", device="cpu")
    assert auto.scale is not None and auto.pixel_size == auto.scale.pixel_size
    assert auto.pixel_size == pytest.approx(0.25, rel=0.15)
    ap_auto = ncs.evaluate(big_labels, auto.segment()).ap
    ap_unscaled = ncs.evaluate(big_labels, ncs.segment(big, model="dense_tcells", device="cpu")).ap  # as 0.5 µm/px
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


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"pixel_size": "big"}, "'auto'"),
    ({"pixel_size": 0.5, "cell_diameter_px": 10}, "not both"),
    ({"cell_diameter_px": 0}, "cell_diameter_px"),
    ({"cell_diameter_px": float("nan")}, "finite"),
])
def test_scale_arguments_are_checked(tissue, kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        ncs.predict(tissue[0], device="cpu", **kwargs)


def test_no_cells_at_any_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="constant"):
        ncs.predict(np.zeros((256, 256), np.float32), pixel_size="auto", device="cpu")



def test_cli_auto_pixel_size_and_cell_diameter(tmp_path, capsys):
    import json

    from napari_cellseg.cli import main

    image = tmp_path / "crop.tif"
    tifffile.imwrite(image, tifffile.imread(SAMPLES / "tissue.tif")[:320, :320])
    assert main(["segment", str(image), "--out", str(tmp_path / "a"), "--pixel-size", "auto"]) == 0
    record = json.loads((tmp_path / "a" / "crop_params.json").read_text())
    assert record["pixel_size_from"] == "estimated from the image"
    assert record["pixel_size_um"] == pytest.approx(0.5, rel=0.15)
    assert main(["segment", str(image), "--out", str(tmp_path / "d"), "--cell-diameter", "15"]) == 0
    record = json.loads((tmp_path / "d" / "crop_params.json").read_text())
    model_um = resolve_model(None)[1].cell_diameter_um  # the model's typical cell (µm)
    assert record["pixel_size_um"] == pytest.approx(model_um / 15)  # 0.5 for 7.5 µm cells 15 px across
    assert record["pixel_size_from"] == "cell diameter 15.0 px"
    assert main(["segment", str(image), "--out", str(tmp_path / "x"), "--cell-diameter", "15",
                 "--pixel-size", "0.5"]) == 2
    assert "without --pixel-size" in capsys.readouterr().err


def test_a_stack_keeps_its_cell_diameter_on_every_plane(tissue):
    from napari_cellseg.pipeline import iter_predict_planes
    from napari_cellseg.progress import drain

    stack = np.stack([tissue[0][:128, :128], tissue[0][128:256, :128]])
    preds = drain(iter_predict_planes(stack, device="cpu", cell_diameter_px=15.0))
    assert [p.pixel_size for p in preds] == [pytest.approx(resolve_model(None)[1].cell_diameter_um / 15)] * 2
    assert all(p.scale is None for p in preds)
