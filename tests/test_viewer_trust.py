"""Trust in the viewer and in the files: readable errors from every button, defaults
that cannot score a layer against itself, samples that open at once, widgets that keep
their width, and result files that record everything used."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellseg.sample_data import tissue_scene


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_CELLSEG_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def tissue():
    scene = tissue_scene()
    return scene.image[:128, :128], scene.labels[:128, :128]


# --- reproducibility: the params JSON of `napari-cellseg segment` -----------------------

def test_segment_params_json_records_everything_used(tmp_path, tissue):
    from napari_cellseg import __version__
    from napari_cellseg.cli import main
    from napari_cellseg.model.registry import DEFAULT_MODEL, resolve_model_path
    from napari_cellseg.model.store import CHECKSUM_KEY
    from napari_cellseg.pipeline import predict

    tifffile.imwrite(tmp_path / "crop.tif", tissue[0])
    assert main(["segment", str(tmp_path / "crop.tif"), "--out", str(tmp_path / "out"),
                 "--sensitivity", "40"]) == 0
    record = json.loads((tmp_path / "out" / "crop_params.json").read_text())
    pred = predict(tissue[0])
    expected = pred.params(sensitivity=40.0).to_dict()
    assert record["parameters"] == json.loads(json.dumps(expected))  # every value, not {}
    assert record["parameters"]["sensitivity"] == 40.0
    path = resolve_model_path(None)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        sha = f.metadata()[CHECKSUM_KEY]
    assert record["model"] == {"name": DEFAULT_MODEL, "path": str(path), "sha256": sha}
    assert len(sha) == 64
    # No pixel size given: the model's, which the image is taken to have (no rescale).
    assert record["pixel_size_um"] == pred.grid.pixel_size == 0.5
    assert record["pixel_size_given"] is False
    assert record["version"] == __version__
    table = pd.read_csv(tmp_path / "out" / "crop_cells.csv")
    assert len(table) == record["cells"] > 0
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.25)


def test_segment_params_json_with_a_given_pixel_size(tmp_path, tissue):
    from napari_cellseg.cli import main

    tifffile.imwrite(tmp_path / "crop.tif", tissue[0])
    assert main(["segment", str(tmp_path / "crop.tif"), "--out", str(tmp_path / "out"),
                 "--pixel-size", "0.4"]) == 0
    record = json.loads((tmp_path / "out" / "crop_params.json").read_text())
    assert record["pixel_size_um"] == 0.4 and record["pixel_size_given"] is True
    table = pd.read_csv(tmp_path / "out" / "crop_cells.csv")
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.16)


# --- every button's error in words: a notification and the status line -----------------

def _segment_widget(viewer, _tmp):
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    w = SegmentCellsWidget(viewer)
    return w, w._runner.run_button, w._runner.status


def _no_image(viewer, tmp):
    return _segment_widget(viewer, tmp)


def _four_d(viewer, tmp):
    viewer.add_image(np.zeros((2, 2, 32, 32), np.float32), name="4d")
    return _segment_widget(viewer, tmp)


def _predict_no_image(viewer, _tmp):
    from napari_cellseg._widgets.predict import PredictWidget

    w = PredictWidget(viewer)
    return w, w._runner.run_button, w._runner.status


def _classic_no_image(viewer, _tmp):
    from napari_cellseg._widgets.classic import ClassicWidget

    w = ClassicWidget(viewer)
    return w, w._run_button, w._status


def _compare(viewer, _tmp):
    from napari_cellseg._widgets.compare import CompareWidget

    w = CompareWidget(viewer)
    return w, w._run_button, w._summary


def _compare_shapes(viewer, tmp):
    viewer.add_labels(np.ones((40, 40), np.int32), name="truth")
    viewer.add_labels(np.ones((30, 30), np.int32), name="cells")
    return _compare(viewer, tmp)


def _compare_itself(viewer, tmp):
    viewer.add_labels(np.ones((40, 40), np.int32), name="cells")  # the only labels layer
    return _compare(viewer, tmp)


def _export(viewer, tmp, folder=None):
    from napari_cellseg._widgets.export import ExportWidget

    viewer.add_labels(np.ones((40, 40), np.int32), name="cells")
    w = ExportWidget(viewer)
    if folder is not None:
        w._folder.value = folder
    return w, w._button, w._status


def _export_no_folder(viewer, tmp):
    return _export(viewer, tmp)


def _export_exists(viewer, tmp):
    w, button, status = _export(viewer, tmp, tmp)
    button.native.click()  # the first export writes
    assert status.value.startswith("wrote 3 files")
    return w, button, status


def _batch(viewer, tmp, folder=None):
    from napari_cellseg._widgets.batch import BatchWidget

    w = BatchWidget(viewer)
    if folder is not None:
        w._input.value = folder
        w._output.value = tmp / "out"
    return w, w._runner.run_button, w._runner.status


def _batch_no_folder(viewer, tmp):
    return _batch(viewer, tmp)


def _batch_empty_folder(viewer, tmp):
    (tmp / "empty").mkdir()
    return _batch(viewer, tmp, tmp / "empty")


def _train_shapes(viewer, _tmp):
    from napari_cellseg._widgets.train import TrainWidget

    viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    viewer.add_labels(np.zeros((32, 32), np.int32), name="corrected")
    w = TrainWidget(viewer)
    return w, w._runner.run_button, w._runner.status


BUTTON_ERRORS = [
    (_no_image, "Segmentation failed: no image layer selected"),
    (_four_d, "has shape (2, 2, 32, 32)"),
    (_predict_no_image, "Prediction failed: no image layer selected"),
    (_classic_no_image, "Segmentation failed: no image layer selected"),
    (_compare_shapes, "has shape (40, 40), prediction 'cells' has shape (30, 30)"),
    (_compare_itself, "same layer 'cells'"),
    (_export_no_folder, "Export failed: choose a folder to export to"),
    (_export_exists, "already exist"),
    (_batch_no_folder, "Batch failed: choose the folder of images"),
    (_batch_empty_folder, "Batch failed: no TIFF / PNG images in"),
    (_train_shapes, "Training failed: labels (32, 32) and image (64, 64) differ in shape"),
]


@pytest.mark.gui
@pytest.mark.parametrize(("setup", "phrase"), BUTTON_ERRORS, ids=[s.__name__ for s, _ in BUTTON_ERRORS])
def test_button_error_is_a_readable_notification(make_napari_viewer, qtbot, tmp_path, setup, phrase):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget, button, status = setup(viewer, tmp_path)
    viewer.window.add_dock_widget(widget)
    before = len(notification_manager.records)
    button.native.click()  # a real click: an escaped exception would fail the test
    qtbot.wait(10)
    messages = [str(r.message) for r in notification_manager.records[before:]]
    assert len(messages) == 1 and phrase in messages[0], messages
    assert status.value == messages[0]  # the status line says what happened
    assert "wrote" not in status.value


@pytest.mark.gui
def test_a_bug_is_shown_and_logged_with_its_traceback(make_napari_viewer, qtbot, monkeypatch, caplog):
    from napari.utils.notifications import notification_manager

    from napari_cellseg._widgets import compare

    def broken(*_, **__):
        return 1 / 0

    monkeypatch.setattr(compare, "evaluate", broken)
    viewer = make_napari_viewer()
    viewer.add_labels(np.ones((8, 8), np.int32), name="truth")
    viewer.add_labels(np.ones((8, 8), np.int32), name="cells")
    widget = compare.CompareWidget(viewer)
    before = len(notification_manager.records)
    with caplog.at_level("ERROR", logger="napari_cellseg._widgets._runner"):
        widget._run_button.native.click()
    messages = [str(r.message) for r in notification_manager.records[before:]]
    assert messages == ["Compare failed: ZeroDivisionError: division by zero"]
    assert widget._summary.value == messages[0]
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and logged[0].exc_info[0] is ZeroDivisionError


# --- defaults that cannot score a layer against itself -----------------------------------

@pytest.mark.gui
def test_compare_and_export_default_to_the_cells_layer(make_napari_viewer):
    from napari_cellseg._widgets.compare import CompareWidget
    from napari_cellseg._widgets.export import ExportWidget
    from napari_cellseg._widgets.train import TrainWidget
    from napari_cellseg.model.registry import DEFAULT_MODEL

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.float32), name="synthetic tissue")
    truth = viewer.add_labels(np.ones((16, 16), np.int32), name="synthetic tissue ground truth")
    compare, export = CompareWidget(viewer), ExportWidget(viewer)
    viewer.window.add_dock_widget(compare)
    viewer.window.add_dock_widget(export)
    assert compare._gt.value is truth and export._folder.value is None
    assert export._folder.line_edit.value == ""  # not "."
    cells = viewer.add_labels(np.ones((16, 16), np.int32), name="cells")  # segmented later
    assert compare._gt.value is truth and compare._pred.value is cells
    assert export._labels.value is cells
    other = viewer.add_labels(np.ones((16, 16), np.int32), name="corrected")
    compare._pred.value = other  # the user's choice stays when layers come and go
    viewer.add_labels(np.ones((16, 16), np.int32), name="cells 2")
    assert compare._pred.value is other and compare._gt.value is truth
    # The layer the user chose is deleted: Export fell to the first one left (the ground
    # truth) and stayed there; now the defaults apply again, a new cells layer included.
    export._labels.value = other
    viewer.layers.remove(other)
    viewer.layers.remove(cells)
    viewer.layers.remove("cells 2")
    assert compare._gt.value is truth
    new_cells = viewer.add_labels(np.ones((16, 16), np.int32), name="cells")
    assert export._labels.value is new_cells and compare._pred.value is new_cells
    train = TrainWidget(viewer)
    assert train._init.value == DEFAULT_MODEL  # fine-tunes the shipped model
    # The model lists say which built-in model is for which image.
    from napari_cellseg._widgets._inputs import ModelInputs

    for combo in (train._init, ModelInputs().model):
        assert "multiscale_nuclei: nuclei in a DNA stain" in combo.tooltip
        assert {"multiscale_nuclei", DEFAULT_MODEL} <= set(combo.choices)


# --- no freeze: samples open from the shipped files -------------------------------------

@pytest.mark.gui
def test_tissue_sample_opens_from_the_shipped_files(make_napari_viewer, monkeypatch):
    from napari_cellseg import sample_data

    def refuse(*_, **__):
        raise AssertionError("the sample was generated on open")

    monkeypatch.setattr(sample_data, "tissue_scene", refuse)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellseg", "tissue")
    image, truth = viewer.layers["synthetic tissue"], viewer.layers["synthetic tissue ground truth"]
    np.testing.assert_array_equal(image.data, tifffile.imread(sample_data.shipped("tissue.tif")))
    assert image.metadata["pixel_size_um"] == 0.5 and truth.data.max() == 1175


def test_shipped_tissue_is_the_generated_one_and_missing_files_are_generated(monkeypatch, tmp_path):
    from napari_cellseg import sample_data

    scene = sample_data.tissue_scene()
    shipped = sample_data.tissue_sample()
    np.testing.assert_array_equal(shipped[1][0], scene.labels)
    np.testing.assert_array_equal(shipped[0][0], sample_data.to_uint16(scene.image))
    monkeypatch.setattr(sample_data, "SAMPLE_FOLDERS", (tmp_path,))  # nothing shipped
    monkeypatch.setattr(sample_data, "tissue_scene", lambda: scene)
    generated = sample_data.tissue_sample()
    np.testing.assert_array_equal(generated[0][0], scene.image)


# --- readable widgets ---------------------------------------------------------------------

@pytest.mark.gui
def test_long_status_wraps_instead_of_widening_the_dock(make_napari_viewer):
    from napari_cellseg._widgets._runner import STATUS_WIDTH
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    viewer = make_napari_viewer()
    widget = SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    short = widget.native.sizeHint().width()
    long_text = "Segmentation failed: " + "a long explanation " * 40 + "/very/long/" * 30
    widget._runner.status.value = long_text
    assert widget._runner.status.native.sizeHint().width() <= STATUS_WIDTH
    assert widget.native.sizeHint().width() <= max(short, STATUS_WIDTH + 200)


@pytest.mark.gui
def test_compare_table_and_outlines_are_readable(make_napari_viewer, qtbot):
    from qtpy.QtCore import QLocale, Qt

    from napari_cellseg._widgets.compare import COLOURS, CONTOUR_PX, LAYER_NAMES, CompareWidget

    viewer = make_napari_viewer(show=True)
    gt = np.zeros((40, 40), np.int32)
    gt[0:10, 0:10] = 1  # half covered by prediction 5: IoU 1/3, FP and FN
    gt[20:30, 20:30] = 2
    pred = np.zeros_like(gt)
    pred[0:10, 5:15] = 5
    pred[20:30, 20:30] = 6  # TP
    viewer.add_labels(gt, name="truth")
    cells = viewer.add_labels(pred, name="cells")
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run()
    qtbot.wait(50)
    table = widget._table.native
    shown = [[table.itemDelegate().displayText(table.item(r, c).data(Qt.ItemDataRole.DisplayRole),
                                               QLocale()) for c in range(table.columnCount())]
             for r in range(table.rowCount())]
    assert shown == [["FP", "5", "4", "10", "0.33"], ["FN", "1", "4", "4", "0.33"]]
    assert table.horizontalScrollBar().maximum() == 0  # every column in view
    tp = viewer.layers[LAYER_NAMES["TP"]]
    assert tp.contour == CONTOUR_PX == 3 and tp.opacity == 1.0
    assert tuple(tp.colormap.map(6)[:3]) == COLOURS["TP"][:3]
    assert viewer.layers.index(tp) > viewer.layers.index(cells) and cells.opacity <= 0.3
