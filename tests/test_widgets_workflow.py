"""The napari workflow in a real viewer under Xvfb: every manifest widget docks, one
click, live sliders that build nothing on the GUI thread, a responsive viewer while the
model runs, Cancel, export, compare, batch, fine-tuning."""

import json
import threading

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellseg.sample_data import tissue_scene

pytestmark = pytest.mark.gui

WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    """Models saved in the viewer go to a temporary folder, not the user's home."""
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_CELLSEG_MODELS", str(folder))
    return folder


@pytest.fixture
def tissue():
    scene = tissue_scene()
    return scene.image[:256, :256], scene.labels[:256, :256]


def wait_done(qtbot, runner):
    qtbot.waitUntil(lambda: runner.worker is None, timeout=WAIT_MS)


def test_every_manifest_widget_docks_through_the_plugin_manager(make_napari_viewer):
    from npe2 import PluginManager

    viewer = make_napari_viewer()  # discovers the installed plugins
    manifest = PluginManager.instance().get_manifest("napari-cellseg")
    names = [w.display_name for w in manifest.contributions.widgets]
    assert len(names) == 10
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-cellseg", name)
        assert dock.widget() is not None and widget is not None, name
    assert len(viewer.window.dock_widgets) == 10


@pytest.fixture
def build_log(monkeypatch):
    """Every seed hierarchy / basin graph built from now on, with the thread that built it."""
    from napari_cellseg.core import cells, seeds

    log = []
    for module, name in ((seeds, "SeedSplitter"), (cells, "BasinGraph")):
        original = getattr(module, name)

        def recorded(*args, _original=original, _name=name, **kwargs):
            log.append((_name, threading.current_thread()))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)
    return log


def refuse_builds(monkeypatch):
    """From now on, building a seed hierarchy or a basin graph is an error."""
    from napari_cellseg.core import cells, seeds

    def refuse(*_, **__):
        raise AssertionError("a hierarchy was built where none should be")

    monkeypatch.setattr(seeds, "SeedSplitter", refuse)
    monkeypatch.setattr(cells, "BasinGraph", refuse)


def segmented(qtbot, tissue, viewer):
    """A SegmentCellsWidget that has segmented the tissue crop."""
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    viewer.add_image(tissue[0], name="tissue", metadata={"pixel_size_um": 0.5})
    widget = SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    # The layer's own pixel size fills the field and turns the estimate off.
    assert widget._pixel_size.value == 0.5 and not widget._inputs.auto_scale.value
    widget.run()
    wait_done(qtbot, widget._runner)
    return widget


def test_one_click_then_h_slider_builds_nothing(make_napari_viewer, qtbot, tissue, monkeypatch):
    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg.core.metrics import evaluate

    viewer = make_napari_viewer()
    widget = segmented(qtbot, tissue, viewer)
    pred = widget.predictions[0]
    cells = viewer.layers[CELLS_LAYER]
    # The sliders start at the shipped model's tuned defaults, and the layer is the
    # pipeline's own segmentation with them.
    defaults = pred.defaults
    assert cells.metadata["parameters"]["sensitivity"] == defaults.sensitivity
    assert widget._seeds.h_probability.value == defaults.h_probability
    assert widget._seeds.split.value == defaults.seed_split
    assert widget._seeds.h.native.isHidden() == (defaults.seed_split != "shape")
    np.testing.assert_array_equal(cells.data, pred.segment(**cells.metadata["parameters"]))
    n_true = len(np.unique(tissue[1])) - 1
    assert evaluate(tissue[1], cells.data).ap >= 0.8  # most of the true cells, one for one
    n_default = int(cells.data.max())
    assert abs(n_default - n_true) <= 0.1 * n_true, (n_default, n_true)
    before = cells.data.copy()
    # The slider path: the prediction worker built the hierarchies; nothing is built now.
    refuse_builds(monkeypatch)
    widget._seeds.sensitivity.value = 10  # seeds only where the seed probability > 0.9
    widget._seeds.h_probability.value = 0.5
    qtbot.waitUntil(lambda: viewer.layers[CELLS_LAYER].metadata["parameters"]["h_probability"] == 0.5,
                    timeout=5000)
    assert widget._live.worker is None  # no worker was needed
    params = viewer.layers[CELLS_LAYER].metadata["parameters"]
    assert params["sensitivity"] == 10
    expected = pred.segment(**params)
    np.testing.assert_array_equal(viewer.layers[CELLS_LAYER].data, expected)
    assert 0 < expected.max() < n_default
    assert not np.array_equal(viewer.layers[CELLS_LAYER].data, before)
    assert [layer.name for layer in viewer.layers].count(CELLS_LAYER) == 1
    assert widget._runner.status.value == f"{int(expected.max())} cells"


def test_shape_split_is_built_in_a_worker(make_napari_viewer, qtbot, tissue, build_log):
    from napari_cellseg._widgets._inputs import CELLS_LAYER

    viewer = make_napari_viewer()
    widget = segmented(qtbot, tissue, viewer)
    pred = widget.predictions[0]
    assert build_log and all(t is not threading.main_thread() for _, t in build_log)  # the prediction worker
    built_by_prediction = len(build_log)
    assert widget._seeds.split.value == "probability"
    widget._seeds.split.value = "shape"  # the paper's split: hierarchies not built yet
    qtbot.waitUntil(lambda: viewer.layers[CELLS_LAYER].metadata["parameters"]["seed_split"] == "shape",
                    timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget._live.worker is None, timeout=WAIT_MS)
    shape_builds = build_log[built_by_prediction:]
    assert shape_builds and all(t is not threading.main_thread() for _, t in shape_builds)
    params = viewer.layers[CELLS_LAYER].metadata["parameters"]
    np.testing.assert_array_equal(viewer.layers[CELLS_LAYER].data, pred.segment(**params))
    # Now warm: an h move is answered at once, on the GUI thread, building nothing.
    n_builds = len(build_log)
    widget._seeds.h.value = 1.0
    qtbot.waitUntil(lambda: viewer.layers[CELLS_LAYER].metadata["parameters"]["h"] == 1.0, timeout=5000)
    assert len(build_log) == n_builds
    np.testing.assert_array_equal(viewer.layers[CELLS_LAYER].data, pred.segment(**{**params, "h": 1.0}))


def test_stack_slider_resegments_the_plane_in_view(make_napari_viewer, qtbot, tissue, tmp_path):
    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    viewer = make_napari_viewer()
    image = tissue[0]
    stack = np.stack([image[:128, :128], image[128:256, 128:256], np.zeros((128, 128), image.dtype)])
    viewer.add_image(stack, name="stack")
    widget = SegmentCellsWidget(viewer)
    widget._pixel_size.value = 0.5
    viewer.dims.set_current_step(0, 1)
    widget.run()
    wait_done(qtbot, widget._runner)
    preds = widget.predictions
    cells = viewer.layers[CELLS_LAYER]
    assert cells.data.shape == (3, 128, 128) and widget.stale_planes == set()
    # The first run reports the plane in view (it said plane 1 before the cells layer existed).
    assert widget._runner.status.value == f"{int(cells.data[1].max())} cells in plane 2 of 3 planes"
    for i in range(3):  # every plane segmented in the worker
        np.testing.assert_array_equal(cells.data[i], preds[i].segment())
    assert cells.data[2].max() == 0
    viewer.dims.set_current_step(0, 0)
    first, second = cells.data[0].copy(), cells.data[1].copy()
    widget._seeds.sensitivity.value = 20
    qtbot.waitUntil(lambda: viewer.layers[CELLS_LAYER].metadata["parameters"]["sensitivity"] == 20,
                    timeout=5000)
    params = widget.params()
    np.testing.assert_array_equal(cells.data[0], preds[0].segment(**params))
    assert not np.array_equal(cells.data[0], first)
    np.testing.assert_array_equal(cells.data[1], second)  # not re-segmented yet
    assert widget.stale_planes == {1, 2}
    assert cells.metadata["stale_planes"] == [1, 2]
    assert widget._runner.status.value == f"{int(cells.data[0].max())} cells in plane 1 of 3 planes"
    viewer.dims.set_current_step(0, 1)  # the user moves to plane 2: it follows the sliders
    qtbot.waitUntil(lambda: 1 not in widget.stale_planes, timeout=5000)
    np.testing.assert_array_equal(cells.data[1], preds[1].segment(**params))
    assert not np.array_equal(cells.data[1], second)
    assert widget.stale_planes == {2}
    assert viewer.layers[CELLS_LAYER].metadata["parameters"] == params
    # Export: a stack with a stale plane would record one set of parameters for planes cut
    # with two; it is refused in words until every plane follows the sliders.
    from napari_cellseg._widgets.export import ExportWidget

    export = ExportWidget(viewer)
    export._labels.value, export._image.value = viewer.layers[CELLS_LAYER], viewer.layers["stack"]
    export._folder.value = tmp_path
    with pytest.raises(ValueError, match="planes 2 of 'cells' still show cells from earlier slider settings"):
        export.export()
    assert list(tmp_path.iterdir()) == []
    viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(lambda: not widget.stale_planes, timeout=5000)
    paths = export.export()  # one multi-page TIFF, a table with the plane, cells per plane
    np.testing.assert_array_equal(tifffile.imread(paths[0]), viewer.layers[CELLS_LAYER].data)
    table = pd.read_csv(paths[1])
    counts = [len(np.unique(cells.data[i])) - 1 for i in range(3)]
    assert table.columns[0] == "plane" and np.bincount(table["plane"], minlength=3).tolist() == counts
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 0
    record = json.loads(paths[2].read_text())
    assert record["cells_per_plane"] == counts and record["cells"] == sum(counts)
    assert record["metadata"]["parameters"] == params
    # What the README promises the record holds: every parameter used (the model's defaults
    # applied), the model's name, file and SHA-256, the version.
    from napari_cellseg import __version__
    from napari_cellseg.model.registry import DEFAULT_MODEL

    assert record["version"] == __version__
    assert record["model"]["name"] == DEFAULT_MODEL and len(record["model"]["sha256"]) == 64
    assert record["metadata"]["parameters_used"] == {
        k: list(v) if isinstance(v, tuple) else v for k, v in preds[2].params(**params).to_dict().items()}
    # A stack's intensities are the image's planes, not the one in view.
    row = table[table["plane"] == 1].iloc[0]
    mask = cells.data[1] == row["label"]
    assert row["mean_intensity"] == pytest.approx(float(stack[1][mask].mean()), rel=1e-5)


def test_viewer_stays_responsive_and_cancel_stops(make_napari_viewer, qtbot):
    from qtpy.QtCore import QTimer

    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    viewer = make_napari_viewer()
    big = np.random.default_rng(0).random((2048, 2048)).astype(np.float32)
    viewer.add_image(big, name="big")
    widget = SegmentCellsWidget(viewer)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    worker = widget.run()
    qtbot.waitUntil(lambda: widget._runner.progress.value >= 1, timeout=WAIT_MS)
    # The event loop turned while tiles were being predicted.
    assert len(ticks) >= 5 and widget._runner.running
    with qtbot.waitSignal(worker.aborted, timeout=WAIT_MS):
        widget._runner.cancel_button.clicked()
    timer.stop()
    wait_done(qtbot, widget._runner)
    assert CELLS_LAYER not in viewer.layers
    assert "cancelled" in widget._runner.status.value


def test_worker_error_is_a_notification(make_napari_viewer, qtbot):
    from napari.utils.notifications import notification_manager

    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    viewer = make_napari_viewer()
    bad = np.full((64, 64), np.nan, np.float32)
    viewer.add_image(bad, name="nan")
    widget = SegmentCellsWidget(viewer)
    before = len(notification_manager.records)
    widget.run()
    wait_done(qtbot, widget._runner)
    messages = [str(r.message) for r in notification_manager.records[before:]]
    assert any("NaN" in m for m in messages), messages
    assert "failed" in widget._runner.status.value


def test_stage_widgets_predict_seeds_cells(make_napari_viewer, qtbot, tissue, build_log):
    from napari_cellseg._widgets._inputs import CELLS_LAYER, PREDICTION_KEY, SEEDS_LAYER
    from napari_cellseg._widgets.predict import PredictWidget
    from napari_cellseg._widgets.seeds_cells import CellsWidget, SeedsWidget

    viewer = make_napari_viewer()
    viewer.add_image(tissue[0], name="tissue")
    predict = PredictWidget(viewer)
    predict.run()
    wait_done(qtbot, predict._runner)
    for name in ("seed probability", "cytoplasm probability", "background probability"):
        assert viewer.layers[name].data.shape == tissue[0].shape
    pred = viewer.layers["seed probability"].metadata[PREDICTION_KEY]
    assert pred.is_warm() and build_log and all(t is not threading.main_thread() for _, t in build_log)
    seeds = SeedsWidget(viewer)
    viewer.window.add_dock_widget(seeds)
    assert seeds._source.value.name == "seed probability"
    n_builds = len(build_log)
    seed_layer = seeds.run()  # warm: drawn at once
    seed_params = seed_layer.metadata["parameters"]
    np.testing.assert_array_equal(seed_layer.data, pred.seeds_input(**seed_params))
    cells_widget = CellsWidget(viewer)
    cells = cells_widget.run()
    assert len(build_log) == n_builds  # neither stage built anything
    params = cells.metadata["parameters"]
    assert params["cell_threshold"] == pytest.approx(pred.defaults.cell_threshold)
    assert params["sensitivity"] == seeds._seeds.sensitivity.value == seed_params["sensitivity"]
    np.testing.assert_array_equal(cells.data, pred.segment(**params))
    assert 0 < cells.data.max() <= seed_layer.data.max()  # one cell per seed at most
    assert cells_widget._status.value == f"{int(cells.data.max())} cells"
    seeds._seeds.split.value = "shape"  # the paper's split, h in µm: built in a worker
    assert not seeds._seeds.h.native.isHidden() and seeds._seeds.h_probability.native.isHidden()
    seeds._seeds.h.value = 0.0  # live: the seeds layer follows
    qtbot.waitUntil(lambda: viewer.layers[SEEDS_LAYER].metadata["parameters"]["h"] == 0.0
                    and viewer.layers[SEEDS_LAYER].metadata["parameters"]["seed_split"] == "shape",
                    timeout=WAIT_MS)
    qtbot.waitUntil(lambda: seeds._updater.worker is None, timeout=WAIT_MS)
    assert len(build_log) > n_builds
    assert all(t is not threading.main_thread() for _, t in build_log)
    shape_params = viewer.layers[SEEDS_LAYER].metadata["parameters"]
    np.testing.assert_array_equal(viewer.layers[SEEDS_LAYER].data, pred.seeds_input(**shape_params))
    assert "LoG response" in viewer.layers
    # The Cells stage follows the seeds layer's parameters, and is warm now.
    cells = cells_widget.run()
    np.testing.assert_array_equal(cells.data, pred.segment(**cells.metadata["parameters"]))
    assert cells.metadata["parameters"]["seed_split"] == "shape"
    assert [layer.name for layer in viewer.layers].count(CELLS_LAYER) == 1


def test_compare_shows_expected_ap(make_napari_viewer):
    from napari_cellseg._widgets.compare import LAYER_NAMES, CompareWidget

    viewer = make_napari_viewer()
    gt = np.zeros((40, 40), np.int32)
    gt[2:8, 2:8] = 1
    gt[20:30, 20:30] = 2
    pred = np.zeros_like(gt)
    pred[2:8, 2:8] = 5  # TP
    pred[32:38, 2:8] = 6  # FP; gt 2 missed (FN)
    viewer.add_labels(gt, name="truth")
    viewer.add_labels(pred, name="pred")
    widget = CompareWidget(viewer)
    widget._gt.value = viewer.layers["truth"]
    widget._pred.value = viewer.layers["pred"]
    r = widget.run()
    assert r.ap == pytest.approx(1 / 3)
    assert "AP 0.333" in widget._summary.value and "FN 1" in widget._summary.value
    assert np.array_equal(np.unique(viewer.layers[LAYER_NAMES["FN"]].data), [0, 2])
    assert np.array_equal(np.unique(viewer.layers[LAYER_NAMES["FP"]].data), [0, 6])
    rows = widget._table.data.to_list()
    assert sorted(r[0] for r in rows) == ["FN", "FP"]
    fn_row = next(i for i, r in enumerate(rows) if r[0] == "FN")
    widget._table.native.selectRow(fn_row)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    np.testing.assert_allclose(camera.center[-2:], (24.5, 24.5))


def test_export_reads_back_and_refuses_overwrite(make_napari_viewer, tmp_path, tissue):
    from napari_cellseg._widgets.export import ExportWidget

    viewer = make_napari_viewer()
    image, labels = tissue
    viewer.add_image(image, name="tissue")
    viewer.add_labels(labels, name="cells", metadata={"parameters": {"h": 3.0}, "pixel_size_um": 0.5})
    widget = ExportWidget(viewer)
    widget._labels.value = viewer.layers["cells"]
    widget._image.value = viewer.layers["tissue"]
    widget._folder.value = tmp_path
    widget._name.value = "run1"
    paths = widget.export()
    np.testing.assert_array_equal(tifffile.imread(paths[0]), labels)
    table = pd.read_csv(paths[1])
    assert len(table) == len(np.unique(labels)) - 1
    assert table["area_um2"].iloc[0] == pytest.approx(table["area_px"].iloc[0] * 0.25)
    assert json.loads(paths[2].read_text())["metadata"]["parameters"] == {"h": 3.0}
    stamp = paths[0].read_bytes()
    with pytest.raises(FileExistsError, match="already exist"):
        widget.export()
    assert paths[0].read_bytes() == stamp
    widget._format.value = ".png"
    widget._name.value = "run2"
    png = widget.export()[0]
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(png), labels)


def test_export_follows_the_layers_pixel_size_and_source(make_napari_viewer, tmp_path, tissue):
    """Docked before segmenting, the widget must still use the pixel size the cells were
    segmented at (a re-run at another size changes the layer's metadata, not the layer),
    unless the user typed one; the intensities come from the image the cells came from."""
    from napari_cellseg._widgets.export import ExportWidget

    viewer = make_napari_viewer()
    image, labels = tissue
    viewer.add_image(image * 0 + 7, name="other")
    viewer.add_image(image, name="tissue")
    widget = ExportWidget(viewer)
    layer = viewer.add_labels(labels, name="cells")  # as Segment cells makes it: metadata after
    widget.reset_choices()
    layer.metadata.update({"pixel_size_um": 0.5, "source": "tissue"})
    widget.reset_choices()
    assert widget._image.value is viewer.layers["tissue"]
    widget._folder.value = tmp_path
    widget._name.value = "a"
    table = pd.read_csv(widget.export()[1])
    assert table["area_um2"].iloc[0] == pytest.approx(table["area_px"].iloc[0] * 0.25)
    assert table["mean_intensity"].iloc[0] != 7
    layer.metadata["pixel_size_um"] = 0.25  # re-segmented at another pixel size
    widget._name.value = "b"
    table = pd.read_csv(widget.export()[1])
    assert table["area_um2"].iloc[0] == pytest.approx(table["area_px"].iloc[0] * 0.0625)
    assert widget._pixel_size.value == pytest.approx(0.25)
    widget._pixel_size.value = 0.4  # typed: it wins over the layer's
    widget._name.value = "c"
    table = pd.read_csv(widget.export()[1])
    assert table["area_um2"].iloc[0] == pytest.approx(table["area_px"].iloc[0] * 0.16)
    # numpy values in the metadata are recorded, not dropped; a name with a path separator
    # stays in the folder.
    layer.metadata.update({"parameters": {"h": np.float32(0.5), "n": np.int64(3)}, "source": "../up/x"})
    widget._name.value = ""
    paths = widget.export()
    assert all(p.parent == tmp_path for p in paths) and paths[0].name == ".._up_x_cells_masks.tif"
    assert json.loads(paths[2].read_text())["metadata"]["parameters"] == {"h": 0.5, "n": 3}


def test_batch_writes_what_the_cli_writes(make_napari_viewer, qtbot, tmp_path, tissue):
    from napari_cellseg._widgets.batch import BatchWidget
    from napari_cellseg.io import read_image
    from napari_cellseg.pipeline import predict

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        tifffile.imwrite(inp / f"img{i}.tif", tissue[0][:, 64 * i : 64 * i + 128])
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    widget._input.value = inp
    widget._output.value = tmp_path / "out"
    widget.run()
    wait_done(qtbot, widget._runner)
    assert [(p.name, n) for p, n in widget.results] == [
        (f"img{i}.tif", int(tifffile.imread(tmp_path / "out" / f"img{i}_masks.tif").max())) for i in range(2)]
    params = widget.params()
    for i in range(2):
        expected = predict(read_image(inp / f"img{i}.tif")).segment(**params)
        masks = tifffile.imread(tmp_path / "out" / f"img{i}_masks.tif")
        np.testing.assert_array_equal(masks, expected)
        assert len(pd.read_csv(tmp_path / "out" / f"img{i}_cells.csv")) == expected.max() > 0
        record = json.loads((tmp_path / "out" / f"img{i}_params.json").read_text())
        assert record["method"] == "unet" and record["cells"] == expected.max()
    assert widget._runner.status.value.startswith("2 images")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    widget.run()  # done with these settings: skipped, nothing rewritten
    wait_done(qtbot, widget._runner)
    assert widget._runner.status.value.startswith("2 images")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps
    widget._resume.value = False
    widget.run()  # the outputs exist now: refused before any work, as a notification
    wait_done(qtbot, widget._runner)
    assert "already exist" in widget._runner.status.value


def test_batch_widget_says_which_images_have_warnings(make_napari_viewer, qtbot, tmp_path, tissue, monkeypatch):
    """A batch's warnings are in each image's record (its workers' logs are not shown);
    the widget counts them at the end, names one, and notifies once."""
    import napari.utils.notifications as notifications

    from napari_cellseg._widgets.batch import BatchWidget

    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "a_cells.tif", tissue[0][:128, :128])
    tifffile.imwrite(inp / "b_tiny.tif", tissue[0][:24, :24])
    widget = BatchWidget(make_napari_viewer())
    widget._input.value, widget._output.value = inp, tmp_path / "out"
    widget.run()
    wait_done(qtbot, widget._runner)
    status = widget._runner.status.value
    assert status.startswith("2 images") and "; 1 with warnings (each in its _params.json, 'warnings'), e.g. " \
        "b_tiny.tif: automatic scale: the image (24 x 24 px) is too small" in status
    assert len(shown) == 1 and shown[0].startswith("1 of 2 images have warnings, e.g. b_tiny.tif: ")


def test_batch_widget_runs_one_scale_for_all_images(make_napari_viewer, qtbot, tmp_path, tissue, monkeypatch):
    """"One scale for all images": every image at the median of the estimates read (here
    0.25 and 0.3 µm: 0.275), said in each record; with a pixel size, refused in words."""
    from napari_cellseg import pipeline
    from napari_cellseg._widgets.batch import BatchWidget
    from napari_cellseg.model.registry import DEFAULT_MODEL
    from napari_cellseg.scale import ScaleEstimate

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        tifffile.imwrite(inp / f"img{i}.tif", tissue[0][:, 64 * i : 64 * i + 128])
    readings = iter([0.5, 0.6])

    def measure(image, model=None, device="auto", **_):
        z = next(readings)
        return z * 0.5, ScaleEstimate(z * 0.5, z, 15 / z, 0.8, ((z, 0.8),), measured_zoom=z), DEFAULT_MODEL, None

    monkeypatch.setattr(pipeline, "measure_scale", measure)
    widget = BatchWidget(make_napari_viewer())
    widget._input.value, widget._output.value = inp, tmp_path / "out"
    widget._same_scale.value = True
    widget._pixel_size.value = 0.5
    with pytest.raises(ValueError, match="'One scale for all images' estimates the images' scale"):
        widget.run()  # the Run button shows it as a notification (the runner's own test)
    widget._pixel_size.value = 0
    widget.run()
    wait_done(qtbot, widget._runner)
    assert widget._runner.status.value.startswith("2 images")
    for i in range(2):
        record = json.loads((tmp_path / "out" / f"img{i}_params.json").read_text())
        assert record["pixel_size_um"] == pytest.approx(0.275)
        assert record["batch_scale"]["measured_on"] == ["img0.tif", "img1.tif"]


def test_pixel_size_fields_keep_a_high_magnifications_size(make_napari_viewer):
    """0.065 µm (100x on a 6.5 µm camera) and 0.1083 µm (60x) stay as they are in every
    pixel size field: two decimals made them 0.07 and 0.11 (areas 16 % and 3 % off)."""
    from napari_cellseg._widgets.batch import BatchWidget
    from napari_cellseg._widgets.export import ExportWidget
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="100x", scale=(0.065, 0.065))
    assert SegmentCellsWidget(viewer)._pixel_size.value == 0.065
    for field in (BatchWidget(viewer)._pixel_size, ExportWidget(viewer)._pixel_size):
        field.value = 0.1083
        assert field.value == 0.1083


def test_batch_widget_takes_a_cell_diameter_in_px_or_um(make_napari_viewer, qtbot, tmp_path, tissue):
    """The Batch widget's cell diameter sets the zoom as predict's does; in µm it needs each
    image's pixel size, and a folder without one is refused before any work, in words."""
    from napari_cellseg._widgets.batch import BatchWidget
    from napari_cellseg.core.preprocess import rescale
    from napari_cellseg.pipeline import predict

    inp = tmp_path / "in"
    inp.mkdir()
    big = rescale(tissue[0][:96, :96].astype(np.float32), 2.0)  # cells ~30 px
    tifffile.imwrite(inp / "big.tif", big)
    widget = BatchWidget(make_napari_viewer())
    widget._input.value, widget._output.value = inp, tmp_path / "out"
    widget._cell_diameter.value, widget._diameter_unit.value = 19.5, "µm"
    widget.run()  # a plain TIFF states no pixel size
    wait_done(qtbot, widget._runner)
    assert "needs each image's pixel size" in widget._runner.status.value
    assert not (tmp_path / "out" / "big_masks.tif").exists()
    widget._pixel_size.value = 0.65  # 19.5 µm = 30 px
    widget.run()
    wait_done(qtbot, widget._runner)
    expected = predict(big, cell_diameter_px=30.0, device="cpu").segment(**widget.params())
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "big_masks.tif"), expected)
    assert expected.max() > 5
    record = json.loads((tmp_path / "out" / "big_params.json").read_text())
    assert record["pixel_size_um"] == 0.65 and record["scale_from"] == "cell diameter 19.5 µm (30 px)"


def test_fine_tune_in_viewer_adds_a_model(make_napari_viewer, qtbot, tissue, user_models):
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget
    from napari_cellseg._widgets.train import TrainWidget
    from napari_cellseg.model.store import load_model

    viewer = make_napari_viewer()
    image, labels = tissue
    viewer.add_image(image[:192, :192], name="img")
    # One annotated region: only the cells of rows 40-139, columns 30-129 are labelled.
    region = np.zeros((192, 192), labels.dtype)
    region[40:140, 30:130] = labels[40:140, 30:130]
    viewer.add_labels(region, name="corrected")
    segment = SegmentCellsWidget(viewer)
    widget = TrainWidget(viewer)
    widget._labels.value = viewer.layers["corrected"]
    widget._init.value = "dense_tcells"
    widget._epochs.value = 2
    widget._steps.value = 2
    widget._name.value = "finetuned"
    assert widget._region.value and widget._resegment.value and widget._minutes.value == 5
    widget.run()
    wait_done(qtbot, widget._runner)
    assert widget.saved == user_models / "finetuned.safetensors" and widget.saved.exists()
    assert not (user_models / "finetuned.best.safetensors").exists()  # the saved model is the kept epoch
    # The widget never resumes: no checkpoint is left in the models folder.
    assert not (user_models / "finetuned.ckpt").exists() and not (user_models / "finetuned.ckpt.json").exists()
    assert len(widget.history) == 2 and "val_mAP" in widget.history[-1]
    assert "finetuned" in segment._model.choices
    info = load_model(widget.saved)[1]
    assert info.extra["val_fraction"] == 0.2  # what a benchmark checks
    # What it trained on: the annotated box grown by 16 px, its cells, the model it started from.
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = f"img[{rows[0] - 16}:{rows[-1] + 17}, {cols[0] - 16}:{cols[-1] + 17}]"
    assert info.extra["trained_on"] == [{"name": box, "shape": [rows[-1] - rows[0] + 33, cols[-1] - cols[0] + 33],
                                         "cells": len(np.unique(region)) - 1}]
    assert info.extra["fine_tuned_from"]["name"] == "dense_tcells"
    assert info.extra["train_config"]["lr"] == 1e-4 and info.extra["train_config"]["freeze_norm"] is True
    assert info.pixel_size == 0.5 and info.cell_diameter_um > 0
    # The whole image re-segmented with the new model, beside the old cells.
    cells = viewer.layers["cells (finetuned)"]
    assert cells.data.shape == (192, 192) and cells.data.max() > 100
    assert cells.metadata["model"] == "finetuned" and "cells in layer" in widget._runner.status.value
    # The saved model is the best epoch if one beat the starting model on the held-out part.
    start, kept = info.extra["start_val_mAP"], info.extra["kept_epoch"]
    val = [r["val_mAP"] for r in widget.history]
    if kept is None:
        assert max(val) <= start and "NO epoch beat dense_tcells" in widget._runner.status.value
    else:
        assert val[kept - 1] == max(val) > start and f"kept epoch {kept}" in widget._runner.status.value
    widget.run()  # the same name again: refused, as a notification, nothing overwritten
    wait_done(qtbot, widget._runner)
    assert "exists" in widget._runner.status.value
    # A cancelled run's best epoch so far is a model in the lists, and the status says so.
    (user_models / "stopped.best.safetensors").write_bytes(widget.saved.read_bytes())
    widget._runner.status.value = "Training: cancelled"
    widget._on_cancelled("stopped")
    assert widget._runner.status.value.startswith(
        "Training: cancelled; the best epoch so far is saved as the model 'stopped-cancelled'")
    assert "stopped-cancelled" in widget._init.choices  # a next run saving to "stopped" cannot delete it
    assert not (user_models / "stopped.best.safetensors").exists()


def test_unknown_pixel_size_estimated_in_one_click(make_napari_viewer, qtbot, tissue):
    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget
    from napari_cellseg.core.metrics import evaluate
    from napari_cellseg.core.preprocess import rescale

    viewer = make_napari_viewer()
    # 0.25 µm/px, not said anywhere; interpolated as optics would draw it (a blocky
    # pixel-doubled copy measures 0.288 µm, as in test_scale.py)
    big = rescale(tissue[0].astype(np.float32), 2.0)
    viewer.add_image(big, name="unknown scale")
    widget = SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    # The default for an image that carries no pixel size: nothing to tick.
    assert widget._inputs.auto_scale.value and not widget._pixel_size.enabled
    widget.run()
    wait_done(qtbot, widget._runner)
    layer = viewer.layers[CELLS_LAYER]
    assert layer.metadata["pixel_size_um"] == pytest.approx(0.25, rel=0.2)  # the sample crop's cells read 16-19 % small
    assert "pixel size estimated" in widget._runner.status.value
    truth = np.kron(tissue[1], np.ones((2, 2), tissue[1].dtype))
    assert evaluate(truth, layer.data).ap >= 0.8


def test_the_viewer_shows_the_warnings_the_log_alone_would_hide(make_napari_viewer, qtbot, tissue, monkeypatch):
    """A crop too small to estimate and a plane of noise: each warning reaches the user as a
    notification, the status line and the layer's metadata, not only the log."""
    import napari.utils.notifications as notifications

    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg._widgets.predict import PredictWidget
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    viewer = make_napari_viewer()
    viewer.add_image(tissue[0][:24, :24].astype(np.float32), name="tiny")
    widget = SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run()
    wait_done(qtbot, widget._runner)
    meta = viewer.layers[CELLS_LAYER].metadata
    assert meta["pixel_size_from"] == "the model's pixel size (no estimate used: see 'warnings')"
    assert len(meta["warnings"]) >= 1 and "too small to estimate its scale" in meta["warnings"][0]
    assert shown[: len(meta["warnings"])] == meta["warnings"]
    status = widget._runner.status.value
    assert "(the model's pixel size: no estimate used). Warning: automatic scale: the image (24 x 24 px)" in status
    # Cells near the model's size: kept at its scale, and what was measured is said too.
    viewer.add_image(tissue[0][:320, :320].astype(np.float32), name="crop")
    widget._image.value = viewer.layers["crop"]
    widget.run()
    wait_done(qtbot, widget._runner)
    meta = viewer.layers[CELLS_LAYER].metadata
    assert meta["pixel_size_um"] == 0.5 and meta["measured_pixel_size_um"] != 0.5 and "warnings" not in meta
    assert (f"(pixel size estimated: {meta['measured_pixel_size_um']:.3g} µm, within a factor √2 of the model's: "
            "used at its 0.5 µm)") in widget._runner.status.value
    # A stack: each plane's warnings, said with their plane (a plane of noise, a plane of cells).
    shown.clear()
    noise = np.random.default_rng(0).normal(size=(96, 96)).astype(np.float32)
    viewer.add_image(np.stack([tissue[0][:96, :96].astype(np.float32), noise]), name="stack")
    widget._image.value = viewer.layers["stack"]
    widget.run()
    wait_done(qtbot, widget._runner)
    assert shown and all(text.startswith("plane 2: ") for text in shown)
    assert any("unsure about most of this image" in text for text in shown)
    # The run's warnings, each with its plane, are the layer's, whichever plane is in view.
    assert viewer.layers[CELLS_LAYER].metadata["warnings"] == shown
    # The probability maps widget says them too.
    shown.clear()
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    predict._image.value = viewer.layers["tiny"]
    predict.run()
    wait_done(qtbot, predict._runner)
    assert "too small to estimate its scale" in shown[0]
    assert predict._runner.status.value.startswith("probability maps ready. Warning: automatic scale:")


def test_the_pixels_are_read_in_the_worker_not_on_the_gui_thread(make_napari_viewer, qtbot, tissue, monkeypatch):
    """A large RGB layer's channel choice or a lazy layer's read would freeze the viewer
    before the progress bar shows; a layer of the wrong shape is still refused at once."""
    from napari_cellseg._widgets import segment_cells
    from napari_cellseg._widgets._inputs import CELLS_LAYER

    threads = []
    real = segment_cells.image_data
    monkeypatch.setattr(segment_cells, "image_data",
                        lambda layer: threads.append(threading.current_thread()) or real(layer))
    viewer = make_napari_viewer()
    rgb = np.zeros((*tissue[0].shape, 3), np.float32)
    rgb[..., 1] = tissue[0]  # one live channel, as the dense set's PNGs
    viewer.add_image(rgb, name="rgb", rgb=True)
    widget = segment_cells.SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run()
    wait_done(qtbot, widget._runner)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert viewer.layers[CELLS_LAYER].data.shape == tissue[0].shape and viewer.layers[CELLS_LAYER].data.max() > 10
    viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="4-D")
    widget._image.value = viewer.layers["4-D"]
    with pytest.raises(ValueError, match=r"has shape \(2, 3, 32, 32\): napari-cellseg segments 2-D images"):
        widget.run()
    assert len(threads) == 1 and widget._runner.worker is None


def test_a_cell_diameter_in_pixels_sets_the_scale(make_napari_viewer, qtbot, tissue):
    """Cellpose's "diameter": cells 30 px across with the model's 7.5 µm cells is 0.25 µm/px;
    the pixel size field steps aside, and the layer says where its scale came from."""
    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget
    from napari_cellseg.core.metrics import evaluate
    from napari_cellseg.core.preprocess import rescale
    from napari_cellseg.model.store import resolve_model

    viewer = make_napari_viewer()
    viewer.add_image(rescale(tissue[0].astype(np.float32), 2.0), name="unknown scale")
    widget = SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    inputs = widget._inputs
    inputs.cell_diameter.value = 30.0
    assert not inputs.pixel_size.enabled and inputs.cell_diameter.enabled
    assert inputs.pixel_size_um is None and inputs.scale_kwargs == {"cell_diameter_px": 30.0}
    widget.run()
    inputs.cell_diameter.value = 0.0  # edited while it runs: the result keeps what it was asked
    assert inputs.pixel_size.enabled and inputs.scale_kwargs == {}
    wait_done(qtbot, widget._runner)
    layer = viewer.layers[CELLS_LAYER]
    implied = resolve_model(layer.metadata["model"])[1].cell_diameter_um / 30  # 0.25 µm for 7.5 µm cells
    assert layer.metadata["pixel_size_um"] == pytest.approx(implied)
    assert layer.metadata["pixel_size_from"] == "cell diameter 30 px"
    assert f"zoom as for {implied:.3g} µm/px, from the cell diameter 30 px" in widget._runner.status.value
    truth = np.kron(tissue[1], np.ones((2, 2), tissue[1].dtype))
    assert evaluate(truth, layer.data).ap >= 0.8
    first = np.array(layer.data)  # the layer is updated in place by the next run
    # One way to set the scale at a time: checking the estimate clears the diameter, and
    # typing a diameter unchecks the estimate.
    inputs.cell_diameter.value = 30.0
    assert not inputs.auto_scale.value
    inputs.auto_scale.value = True
    assert inputs.cell_diameter.value == 0 and inputs.pixel_size_um == "auto" and inputs.scale_kwargs == {}
    assert not inputs.pixel_size.enabled
    # An image layer with its own pixel size: the diameter sets the zoom, the layer's size the µm.
    inputs.cell_diameter.value = 30.0
    assert not inputs.auto_scale.value
    viewer.layers["unknown scale"].metadata["pixel_size_um"] = 0.65
    widget.run()
    wait_done(qtbot, widget._runner)
    meta = viewer.layers[CELLS_LAYER].metadata
    assert meta["pixel_size_um"] == 0.65 and meta["pixel_size_from"] == "image layer"
    assert meta["scale_from"] == "cell diameter 30 px" and meta["scale_pixel_size_um"] == pytest.approx(implied)
    np.testing.assert_array_equal(viewer.layers[CELLS_LAYER].data, first)  # the same zoom, the same cells
    # In µm: the pixel size field stays open, turns 19.5 µm into 30 px and measures the µm.
    inputs.diameter_unit.value = "µm"
    inputs.cell_diameter.value = 19.5
    assert inputs.pixel_size.enabled and not inputs.auto_scale.value
    inputs.pixel_size.value = 0.0
    with pytest.raises(ValueError, match="needs the image's pixel size"):
        inputs.scale_kwargs  # noqa: B018 (the property raises)
    widget._runner.run_button.native.click()  # the same, as a user gets it: in words, nothing run
    qtbot.wait(10)
    assert "needs the image's pixel size" in widget._runner.status.value and not widget._runner.running
    inputs.pixel_size.value = 0.65
    assert inputs.scale_kwargs == {"cell_diameter_px": pytest.approx(30.0)}
    widget.run()
    wait_done(qtbot, widget._runner)
    meta = viewer.layers[CELLS_LAYER].metadata
    assert meta["pixel_size_um"] == 0.65 and meta["pixel_size_from"] == "image layer"  # the layer's 0.65
    assert meta["scale_from"] == "cell diameter 19.5 µm (30 px)"
    np.testing.assert_array_equal(viewer.layers[CELLS_LAYER].data, first)


def test_results_lie_on_a_scaled_image_and_hand_edits_are_kept(make_napari_viewer, qtbot, tissue):
    """A result layer takes its image's scale and offset (a 'slide view' crop, an image
    opened in µm), replaces the metadata of an earlier run rather than merging it, and a
    cells layer the user painted on is kept, renamed, when the sliders re-segment."""
    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    viewer = make_napari_viewer()
    viewer.add_image(tissue[0][:128, :128], name="crop", scale=(0.5, 0.5), translate=(100.0, 200.0),
                     metadata={"pixel_size_um": 0.5})
    widget = SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run()
    wait_done(qtbot, widget._runner)
    cells = viewer.layers[CELLS_LAYER]
    assert tuple(cells.scale) == (0.5, 0.5) and tuple(cells.translate) == (100.0, 200.0)
    # "auto" (the list's default) records the model it chose, and why (choose.py).
    assert widget._inputs.model_name == "auto"
    assert cells.metadata["model"] == cells.metadata["model_choice"]["chosen"] == "dense_tcells_multiscale"
    cells.metadata["left_by_an_earlier_run"] = True
    widget._seeds.sensitivity.value = 30  # re-segments into the same layer
    qtbot.waitUntil(lambda: cells.metadata.get("parameters", {}).get("sensitivity") == 30, timeout=WAIT_MS)
    assert "left_by_an_earlier_run" not in cells.metadata
    # The user corrects a cell by hand, then moves a slider: the corrections are kept.
    cells.paint((10, 10), 999)
    painted = cells.data.copy()
    widget._seeds.sensitivity.value = 50
    qtbot.waitUntil(lambda: f"{CELLS_LAYER} (edited)" in viewer.layers, timeout=WAIT_MS)
    np.testing.assert_array_equal(viewer.layers[f"{CELLS_LAYER} (edited)"].data, painted)
    fresh = viewer.layers[CELLS_LAYER]
    assert fresh is not cells and (fresh.data == 999).sum() == 0
    assert tuple(fresh.scale) == (0.5, 0.5)


def test_batch_refuses_a_cells_layer_tuned_with_another_model(make_napari_viewer, tmp_path, tissue):
    from napari_cellseg._widgets.batch import BatchWidget

    viewer = make_napari_viewer()
    viewer.add_labels(tissue[1], name="cells", metadata={"parameters": {"sensitivity": 70},
                                                         "model": "multiscale_nuclei"})
    widget = BatchWidget(viewer)
    # "auto" (the default) with the layer's parameters runs the model they were tuned with.
    assert widget._model.value == "auto" and widget.run_model() == "multiscale_nuclei"
    assert widget.params() == {"sensitivity": 70}
    widget._model.value = "dense_tcells_multiscale"  # another model named: refused in words
    with pytest.raises(ValueError, match="tuned with the model 'multiscale_nuclei', not 'dense_tcells_multiscale'"):
        widget.params()
    widget._model.value = "multiscale_nuclei"
    assert widget.params() == {"sensitivity": 70}
    widget._from_layer.value = False
    assert widget.params() == widget._seeds.params()


def test_stage_widgets_opened_before_predict_follow_it(make_napari_viewer, qtbot, tissue):
    """Seeds and Cells docked before Predict ran: a slider says why nothing happens, then
    they take the prediction when it comes, and their layers record its image and model."""
    from napari_cellseg._widgets.predict import PredictWidget
    from napari_cellseg._widgets.seeds_cells import CellsWidget, SeedsWidget

    viewer = make_napari_viewer()
    viewer.add_image(tissue[0], name="tissue")
    seeds, cells_widget = SeedsWidget(viewer), CellsWidget(viewer)
    viewer.window.add_dock_widget(seeds)
    viewer.window.add_dock_widget(cells_widget)
    seeds._seeds.sensitivity.value = 40
    qtbot.waitUntil(lambda: "run '1. Preprocess and predict' first" in seeds._status.value, timeout=5000)
    predict = PredictWidget(viewer)
    predict.run()
    wait_done(qtbot, predict._runner)
    assert seeds._source.value is viewer.layers["seed probability"]
    assert cells_widget._source.value is viewer.layers["seed probability"]
    cells = cells_widget.run()
    assert cells.metadata["source"] == "tissue" and predict._inputs.model_name == "auto"
    assert cells.metadata["model"] == cells.metadata["model_choice"]["chosen"] == "dense_tcells_multiscale"
    assert cells.metadata["stage"] == "cells" and "parameters" in cells.metadata
    # The cells follow the seeds: a Seeds slider redraws the cells too.
    seeds.run()
    seeds._seeds.sensitivity.value = 80
    qtbot.waitUntil(lambda: viewer.layers["cells"].metadata["parameters"].get("sensitivity") == 80,
                    timeout=WAIT_MS)


def test_a_runtime_error_in_a_worker_is_shown_and_ends_the_run(qtbot):
    """superqt took a generator's RuntimeError (CUDA out of memory, no such device) for a
    deleted worker: no error, no finished, Run disabled and 'running' for ever."""
    from napari_cellseg._widgets._runner import Runner
    from napari_cellseg.progress import Progress

    def fails():
        yield Progress(0, 2, "steps")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    runner = Runner("Run", "Prediction")
    runner.start(fails, on_done=lambda _: None)
    qtbot.waitUntil(lambda: runner.worker is None, timeout=10_000)
    assert runner.status.value == "Prediction failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert runner.run_button.enabled and not runner.cancel_button.enabled


def test_cancel_stops_a_run_still_waiting_for_a_thread(qtbot):
    """A worker queued behind others (one thread per core) was not 'running': Cancel did
    nothing and the run went to its end later."""
    from napari_cellseg._widgets._runner import Runner
    from napari_cellseg.progress import Progress

    steps = []

    def work():
        for i in range(3):
            steps.append(i)
            yield Progress(i, 3, "steps")
        return "done"

    done = []
    runner = Runner("Run", "Train")
    runner.start(work, on_done=done.append)
    runner.cancel()  # before any thread has picked it up
    qtbot.waitUntil(lambda: runner.worker is None, timeout=10_000)
    assert done == [] and steps == [] and runner.status.value == "Train: cancelled"


def test_a_dock_removed_mid_run_cancels_it(qtbot):
    """napari's remove_dock_widget only takes the widget out of its dock (setParent(None));
    the worker holds it alive, so 'destroyed' never fired and the run went on."""
    import time

    from magicgui.widgets import Container
    from qtpy.QtWidgets import QWidget

    from napari_cellseg._widgets._runner import Runner
    from napari_cellseg.progress import Progress

    def slow():
        for i in range(2000):
            time.sleep(0.01)
            yield Progress(i, 2000, "steps")
        return "finished"

    dock = QWidget()
    runner = Runner("Run", "Slow")
    container = Container(widgets=runner.widgets)
    container.native.setParent(dock)
    done = []
    runner.start(slow, on_done=done.append)
    container.native.setParent(None)  # what remove_dock_widget does
    qtbot.waitUntil(lambda: runner.worker is None, timeout=10_000)
    assert runner._closed and done == []
    # Docked again (a script may): the next run is not cancelled nor its result dropped.
    container.native.setParent(dock)

    def quick():
        yield Progress(0, 1, "steps")
        return "quick"

    runner.start(quick, on_done=done.append)
    qtbot.waitUntil(lambda: runner.worker is None, timeout=10_000)
    assert done == ["quick"] and runner.run_button.enabled


def test_a_closed_widget_cancels_its_run_and_shows_nothing(qtbot):
    import time

    from napari_cellseg._widgets._runner import Runner
    from napari_cellseg.progress import Progress

    def slow():
        for i in range(2000):
            time.sleep(0.01)
            yield Progress(i, 2000, "steps")
        return "finished"

    done = []
    runner = Runner("Run", "Slow")
    runner.start(slow, on_done=done.append)
    qtbot.waitUntil(lambda: runner.running, timeout=5000)
    runner.run_button.native.deleteLater()  # the dock closed: its widgets are destroyed
    qtbot.waitUntil(lambda: runner.worker is None, timeout=10_000)
    assert runner._closed and done == []


def test_auto_is_offered_where_one_image_or_a_batch_is_segmented(make_napari_viewer):
    from napari_cellseg._widgets.batch import BatchWidget
    from napari_cellseg._widgets.predict import PredictWidget
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget
    from napari_cellseg._widgets.slide import SlideWidget
    from napari_cellseg._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    for widget in (SegmentCellsWidget(viewer), PredictWidget(viewer)):
        assert widget._inputs.model.value == "auto" and widget._inputs.model.choices[0] == "auto"
    assert BatchWidget(viewer)._model.value == "auto"
    # A slide runs one model; training starts from a model: no "auto" there.
    slide = SlideWidget(viewer)
    assert slide._model.value == "dense_tcells_multiscale" and "auto" not in slide._model.choices
    assert "auto" not in TrainWidget(viewer)._init.choices


def test_the_model_auto_chose_is_what_the_layer_and_the_export_record(make_napari_viewer, qtbot, tmp_path,
                                                                      tissue, monkeypatch):
    from napari_cellseg import choose
    from napari_cellseg._widgets._inputs import CELLS_LAYER
    from napari_cellseg._widgets.export import ExportWidget
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget

    def nuclear(image, zoom=1.0, device="auto", tophat_px=None, memo=None):
        return choose.ModelChoice(choose.NUCLEAR_MODEL, {choose.DEFAULT_MODEL: 0.7, choose.NUCLEAR_MODEL: 0.75}, zoom)

    monkeypatch.setattr(choose, "choose_model", nuclear)
    viewer = make_napari_viewer()
    viewer.add_image(tissue[0], name="tissue", metadata={"pixel_size_um": 0.5})
    widget = SegmentCellsWidget(viewer)
    widget.run()
    wait_done(qtbot, widget._runner)
    cells = viewer.layers[CELLS_LAYER]
    assert cells.metadata["model"] == "multiscale_nuclei" and cells.metadata["model_choice"]["chosen"] == "multiscale_nuclei"
    assert cells.metadata["parameters_tuned"] is False  # no slider moved
    # Untouched defaults do not fix Batch's 'auto' to this model; moved sliders do.
    from napari_cellseg._widgets.batch import BatchWidget

    batch = BatchWidget(viewer)
    assert batch.run_model() == "auto" and batch.params() == cells.metadata["parameters"]
    widget._seeds.sensitivity.value = 45
    qtbot.waitUntil(lambda: cells.metadata.get("parameters", {}).get("sensitivity") == 45, timeout=WAIT_MS)
    assert cells.metadata["parameters_tuned"] is True and batch.run_model() == "multiscale_nuclei"
    export = ExportWidget(viewer)
    export._labels.value, export._image.value = cells, viewer.layers["tissue"]
    export._folder.value = tmp_path
    record = json.loads(export.export()[2].read_text())
    assert record["model"]["name"] == "multiscale_nuclei" and len(record["model"]["sha256"]) == 64


def test_train_starts_from_the_model_the_corrected_cells_came_from(make_napari_viewer, tissue, monkeypatch):
    from napari_cellseg._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    viewer.add_image(tissue[0], name="tissue")
    cells = viewer.add_labels(tissue[1], name="cells", metadata={"model": "multiscale_nuclei", "parameters": {}})
    widget = TrainWidget(viewer)
    widget.reset_choices()
    assert widget._labels.value.name == "cells" and widget._init.value == "multiscale_nuclei"
    # A re-run updates the layer in place (no change of layer): Train reads it again on run.
    cells.metadata = {**cells.metadata, "model": "dense_tcells_multiscale"}
    started = []
    monkeypatch.setattr(widget._runner, "start", lambda *a, **k: started.append(k["init"]))
    widget.run()
    assert started == ["dense_tcells_multiscale"]
    # Once the user picks a model, it stays, whatever labels layer is chosen next.
    widget._init.value = "dense_tcells"
    viewer.add_labels(tissue[1], name="other", metadata={"model": "dense_tcells_multiscale"})
    widget.reset_choices()
    widget._labels.value = viewer.layers["other"]
    assert widget._init.value == "dense_tcells"


def test_slide_takes_untouched_defaults_from_a_view_auto_ran_with_another_model(make_napari_viewer, tissue):
    from napari_cellseg._widgets.slide import SlideWidget

    viewer = make_napari_viewer()
    layer = viewer.add_labels(tissue[1], name="cells", metadata={
        "parameters": {"sensitivity": 60, "h_probability": 0.15}, "model": "multiscale_nuclei",
        "parameters_tuned": False})
    widget = SlideWidget(viewer)
    assert widget._model.value == "dense_tcells_multiscale"
    assert widget.params() == {"sensitivity": 60, "h_probability": 0.15}
    layer.metadata = {**layer.metadata, "parameters_tuned": True}  # a slider moved: tuned for that model
    with pytest.raises(ValueError, match="tuned with the model 'multiscale_nuclei'"):
        widget.params()
