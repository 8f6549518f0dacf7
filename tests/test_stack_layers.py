"""Stacks, RGB stacks and multiscale layers in the widgets: the right plane, the finest
level, and results that stay tied to the plane they were cut from."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile


def _blocks_stack(n: int = 5, side: int = 40) -> np.ndarray:
    """n planes, two bright squares each, plane i at brightness 100 (i + 1)."""
    stack = np.zeros((n, side, side), np.float32)
    for i in range(n):
        stack[i, 5:15, 5:15] = stack[i, 22:34, 20:32] = 100.0 * (i + 1)
    return stack


@pytest.mark.gui
def test_multiscale_labels_are_exported_and_written_at_their_finest_level(make_napari_viewer, tmp_path):
    """np.asarray of napari's multiscale data is the coarsest level: a slide's cells were
    exported at a quarter of their size, with areas to match."""
    from napari_cellseg._widgets.export import ExportWidget
    from napari_cellseg._writer import write_labels_layer

    viewer = make_napari_viewer()
    fine = np.zeros((64, 64), np.uint32)
    fine[8:24, 8:24] = 1  # 256 px
    labels = viewer.add_labels([fine, fine[::2, ::2]], multiscale=True, name="slide cells",
                               metadata={"pixel_size_um": 0.5})
    export = ExportWidget(viewer)
    export._labels.value, export._folder.value = labels, tmp_path
    paths = export.export()
    np.testing.assert_array_equal(tifffile.imread(paths[0]), fine)
    assert pd.read_csv(paths[1])["area_px"].tolist() == [256]
    data, meta, _ = labels.as_layer_data_tuple()  # what napari's File > Save hands the writer
    (written,) = write_labels_layer(str(tmp_path / "saved.tif"), data, meta)
    np.testing.assert_array_equal(tifffile.imread(written), fine)


@pytest.mark.gui
def test_a_result_cut_from_a_stack_keeps_its_plane(make_napari_viewer, tmp_path):
    """Classic on plane 1, then the slider moved to plane 4: Export and Train took the
    intensities of plane 4 with no error."""
    from napari_cellseg._widgets.classic import ClassicWidget
    from napari_cellseg._widgets.export import ExportWidget
    from napari_cellseg._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    stack = _blocks_stack()
    image = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    classic = ClassicWidget(viewer)
    classic._image.value = image
    layer = classic.run()
    assert layer.data.shape == (40, 40) and layer.data.max() == 2
    assert layer.metadata["plane"] == [1]
    viewer.dims.set_current_step(0, 4)
    export = ExportWidget(viewer)
    export._labels.value, export._image.value, export._folder.value = layer, image, tmp_path
    paths = export.export()
    assert pd.read_csv(paths[1])["mean_intensity"].tolist() == [200.0, 200.0]
    assert json.loads(paths[2].read_text())["metadata"]["plane"] == [1]
    train = TrainWidget(viewer)
    train._image.value, train._labels.value, train._region.value = image, layer, False
    (name, pair_image, pair_labels), = train._pairs()[0]
    assert pair_image.max() == 200.0 and pair_labels.max() == 2
    assert name == "stack[plane 1]"  # the model's trained_on says which plane
    assert train._plane == [1]
    # A stack of corrected cells (Segment cells' layer): the plane in view of both.
    cells = viewer.add_labels(np.stack([layer.data] * 5), name="cells stack")
    train.reset_choices()  # as napari does for a docked widget when layers change
    train._labels.value = cells
    (_, pair_image, _), = train._pairs()[0]
    assert pair_image.max() == 500.0 and train._plane == [4]
    # The plane recorded does not exist in the image chosen: said, not guessed.
    viewer.add_image(stack[:1], name="short")
    export.reset_choices()
    export._image.value = viewer.layers["short"]
    export._name.value = "other"
    with pytest.raises(ValueError, match=r"cut from plane \[1\] of a stack; 'short' has planes \[1\]"):
        export.export()


def test_rgb_layers_give_one_channel_whatever_their_leading_axes():
    """An RGB layer of shape (1, M, N, 3) came out as M planes of N x 3."""
    from napari.layers import Image

    from napari_cellseg._widgets._inputs import image_data
    from napari_cellseg._widgets._layers import image_plane

    grey = _blocks_stack(2)
    rgb = np.zeros((*grey.shape, 3), np.float32)
    rgb[..., 1] = grey  # one live channel, green
    np.testing.assert_array_equal(image_data(Image(rgb[:1], rgb=True)), grey[:1])  # a stack of one, as grey
    np.testing.assert_array_equal(image_data(Image(rgb, rgb=True)), grey)
    np.testing.assert_array_equal(image_plane(Image(rgb, rgb=True), plane=[1]), grey[1])


@pytest.mark.gui
def test_show_layer_does_not_keep_an_old_colour_model(make_napari_viewer):
    from napari_cellseg._widgets._layers import show_layer

    viewer = make_napari_viewer()
    grey = _blocks_stack(2)
    show_layer(viewer, grey, "view", "image")
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    layer = show_layer(viewer, rgb, "view", "image")
    assert layer.rgb and layer.data.shape == rgb.shape and len(viewer.layers) == 1


def test_a_stack_that_opens_blank_is_estimated_from_its_first_plane_with_cells():
    """Plane 0 blank: its 'nothing to measure' (the model's scale, pixel size None) held
    for every plane, so no plane was estimated."""
    from napari_cellseg.pipeline import iter_predict_planes, predict
    from napari_cellseg.progress import drain
    from napari_cellseg.sample_data import tissue_scene

    image = tissue_scene().image[:128, :128]
    alone = predict(image, "auto", device="cpu")
    assert alone.pixel_size is not None
    preds = drain(iter_predict_planes(np.stack([np.zeros_like(image), image]), "auto", device="cpu"))
    assert [p.pixel_size for p in preds] == [alone.pixel_size] * 2
    np.testing.assert_array_equal(preds[1].segment(), alone.segment())
    assert preds[0].segment().max() == 0


@pytest.mark.gui
def test_compare_scores_a_stack_plane_by_plane(make_napari_viewer):
    """Stacks of labels were refused ("must be a 2-D label image")."""
    from napari_cellseg._widgets.compare import CompareWidget

    viewer = make_napari_viewer()
    truth = np.zeros((3, 40, 40), np.int32)
    truth[:, 5:15, 5:15], truth[:, 22:34, 20:32] = 1, 2
    found = truth.copy()
    found[2, 22:34, 20:32] = 0  # plane 2 misses one cell
    gt = viewer.add_labels(truth, name="ground truth")
    pred = viewer.add_labels(found, name="cells")
    compare = CompareWidget(viewer)
    compare._gt.value, compare._pred.value = gt, pred
    viewer.dims.set_current_step(0, 1)
    assert compare.run().ap == 1.0 and compare._summary.value.startswith("plane 1: AP 1.000")
    viewer.dims.set_current_step(0, 2)
    assert compare.run().ap == 0.5 and compare._summary.value.startswith("plane 2: AP 0.500  (TP 1, FP 0, FN 1)")
    # A 2-D result cut from plane 2 is scored against that plane, whatever is in view.
    cut = viewer.add_labels(found[2], name="classic cells", metadata={"plane": [2]})
    compare.reset_choices()
    compare._pred.value = cut
    viewer.dims.set_current_step(0, 0)
    assert compare.run().ap == 0.5
    cut.metadata["plane"] = [7]
    with pytest.raises(ValueError, match=r"'ground truth' has planes \[3\]: it has no plane \[7\]"):
        compare.run()


@pytest.mark.gui
def test_predict_keeps_a_users_layer_that_shares_a_result_name(make_napari_viewer, qtbot):
    """Predict removed any layer called 'preprocessed' (a user's preprocessed.tif) when its
    run had no preprocessed image to show."""
    from napari_cellseg._widgets._layers import remove_result, show_layer

    viewer = make_napari_viewer()
    mine = viewer.add_image(np.ones((8, 8)), name="preprocessed")
    remove_result(viewer, "preprocessed")
    assert mine in viewer.layers and mine.name == "preprocessed (kept)"
    ours = show_layer(viewer, np.zeros((8, 8)), "preprocessed", "image")
    remove_result(viewer, "preprocessed")  # an earlier result of ours: removed
    assert ours not in viewer.layers and mine in viewer.layers


@pytest.mark.gui
def test_compare_draws_on_the_prediction_when_the_layers_are_placed_apart(make_napari_viewer):
    """A mask opened without the image's scale: scored pixel for pixel, but the missed
    cells were drawn on the truth's grid, away from the others, without a word."""
    from napari_cellseg._widgets.compare import LAYER_NAMES, CompareWidget

    viewer = make_napari_viewer()
    truth = np.zeros((40, 40), np.int32)
    truth[5:15, 5:15], truth[22:34, 20:32] = 1, 2
    gt = viewer.add_labels(truth, name="ground truth")
    pred = viewer.add_labels(np.where(truth == 1, 1, 0), name="cells", scale=(0.65, 0.65))
    compare = CompareWidget(viewer)
    compare._gt.value, compare._pred.value = gt, pred
    assert compare.run().ap == 0.5
    assert "placed differently" in compare._summary.value
    np.testing.assert_allclose(viewer.layers[LAYER_NAMES["FN"]].scale, (0.65, 0.65))


@pytest.mark.gui
def test_a_live_result_of_an_earlier_prediction_is_dropped(make_napari_viewer, qtbot):
    """A worker's seeds arrived after Predict ran again (the layer refilled in place) and
    were shown with the new prediction's record."""
    from napari_cellseg._widgets._inputs import PREDICTION_KEY, SEEDS_LAYER
    from napari_cellseg._widgets.predict import PredictWidget
    from napari_cellseg._widgets.seeds_cells import SeedsWidget
    from napari_cellseg.sample_data import tissue_scene

    viewer = make_napari_viewer()
    viewer.add_image(tissue_scene().image[:96, :96], name="tissue")
    predict = PredictWidget(viewer)
    predict._pixel_size.value = 0.5
    predict.run()
    qtbot.waitUntil(lambda: predict._runner.worker is None, timeout=60_000)
    seeds = SeedsWidget(viewer)
    layer = viewer.layers["seed probability"]
    old = layer.metadata[PREDICTION_KEY]
    seeds._seeds.split.value = "shape"  # not built yet: a worker computes it
    qtbot.waitUntil(lambda: seeds._updater.busy, timeout=5000)
    layer.metadata = {**layer.metadata, PREDICTION_KEY: object()}  # Predict ran again meanwhile
    qtbot.waitUntil(lambda: not seeds._updater.busy, timeout=60_000)
    assert SEEDS_LAYER not in viewer.layers
    assert "a result of an earlier prediction was dropped" in seeds._status.value
    layer.metadata = {**layer.metadata, PREDICTION_KEY: old}
    seeds.run()  # the current prediction: its seeds are shown (now or from a worker)
    qtbot.waitUntil(lambda: SEEDS_LAYER in viewer.layers, timeout=60_000)
    assert viewer.layers[SEEDS_LAYER].metadata["parameters"]["seed_split"] == "shape"
    assert "dropped" not in seeds._status.value


def test_a_pixel_size_of_two_values_is_refused_in_words():
    """napari's layer.scale[-2:] given as the pixel size: numpy's "truth value of an array
    is ambiguous" before, now the package's own words."""
    import napari_cellseg as ncs

    for call in (lambda: ncs.predict(np.zeros((32, 32), np.float32), np.array([0.5, 0.5]), device="cpu"),
                 lambda: ncs.segment(np.zeros((32, 32), np.float32), np.array([0.5, 0.5]))):
        with pytest.raises(ValueError, match=r"pixel_size must be a number of µm > 0, got array"):
            call()
