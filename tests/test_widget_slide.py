"""The Whole slide widget (_widgets/slide.py) in a real viewer: an image layer sent to a
local dask cluster block by block gives the one-piece cells as a lazy labels layer;
Cancel stops the run (the cluster shut down) and a second run finishes it; the region
in view is copied for tuning; settings block mode cannot honour are refused in words."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_cellseg.core.synthetic import make_whole_cell_image  # noqa: E402


def first_pixel_order(labels: np.ndarray) -> np.ndarray:
    ids, first = np.unique(labels.ravel(), return_index=True)
    keep = ids > 0
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lut[ids[keep][np.argsort(first[keep])]] = np.arange(1, keep.sum() + 1)
    return lut[labels]


def wait_done(qtbot, runner, timeout=300_000):
    qtbot.waitUntil(lambda: runner.worker is None, timeout=timeout)


@pytest.fixture(scope="module")
def slide():
    from napari_cellseg import segment

    image = make_whole_cell_image(seed=3, shape=(520, 540)).image
    return image, segment(image, device="cpu")


def make_widget(viewer, image, out):
    from napari_cellseg._widgets.slide import SlideWidget

    viewer.add_image(image, name="slide", scale=(0.5, 0.5))
    widget = SlideWidget(viewer)
    widget._image.value = viewer.layers["slide"]
    widget._output.value = out
    widget._block.value = 256
    widget._workers.value = 1
    return widget


@pytest.mark.gui
def test_a_layer_is_segmented_block_wise_into_a_lazy_labels_layer(make_napari_viewer, qtbot, slide, tmp_path):
    from napari_cellseg._widgets.slide import SLIDE_CELLS_LAYER

    image, reference = slide
    viewer = make_napari_viewer()
    widget = make_widget(viewer, image, tmp_path / "out.zarr")
    widget.run()
    wait_done(qtbot, widget._runner)
    assert widget.result is not None, widget._runner.status.value
    layer = viewer.layers[SLIDE_CELLS_LAYER]
    assert tuple(layer.scale) == (0.5, 0.5)  # on the slide, whatever the output's own units
    data = layer.data[0] if layer.multiscale else layer.data
    assert not isinstance(data, np.ndarray)  # lazy: read as drawn
    np.testing.assert_array_equal(first_pixel_order(np.asarray(data)), first_pixel_order(reference))
    assert widget._runner.status.value.startswith(f"{int(reference.max())} cells in 9 blocks")


@pytest.mark.gui
def test_cancel_stops_the_run_and_a_second_run_finishes_it(make_napari_viewer, qtbot, slide, tmp_path):
    from napari_cellseg._widgets.slide import SLIDE_CELLS_LAYER

    image, reference = slide
    viewer = make_napari_viewer()
    out = tmp_path / "out.zarr"
    widget = make_widget(viewer, image, out)
    runner = widget._runner
    widget.run()
    # Cancel once the first block is done (its marker is on disk).
    qtbot.waitUntil(lambda: len(list((out / "_work" / "blocks").glob("*.json"))) >= 1 if out.exists()
                    else False, timeout=300_000)
    runner.cancel()
    wait_done(qtbot, runner)
    assert runner.status.value == "Slide: cancelled"
    assert SLIDE_CELLS_LAYER not in viewer.layers
    assert not zarr.open_group(str(out), mode="r").attrs["napari_cellseg"].get("complete")
    done_before = len(list((out / "_work" / "blocks").glob("*.json")))
    assert done_before < 9
    widget.run()  # "Finish an earlier run" is ticked by default
    wait_done(qtbot, runner)
    assert widget.result is not None, runner.status.value
    assert len(widget.result.skipped) >= 1
    np.testing.assert_array_equal(first_pixel_order(np.asarray(viewer.layers[SLIDE_CELLS_LAYER].data[0])),
                                  first_pixel_order(reference))


@pytest.mark.gui
def test_tune_on_view_copies_the_region_in_view(make_napari_viewer, slide):
    from napari_cellseg._widgets.slide import VIEW_LAYER, SlideWidget

    viewer = make_napari_viewer()
    big = np.tile(slide[0], (5, 5))  # 2600 x 2700: more than the 2048 px copied
    viewer.add_image(big, name="slide", scale=(0.5, 0.5))
    widget = SlideWidget(viewer)
    widget._image.value = viewer.layers["slide"]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (600.0, 700.0)  # world units: pixel (1200, 1400)
    view = widget.tune_on_view()
    rows, cols = view.metadata["slide_region"]["rows"], view.metadata["slide_region"]["cols"]
    assert rows[1] - rows[0] <= 2048 and cols[1] - cols[0] <= 2048
    assert rows[0] <= 1200 < rows[1] and cols[0] <= 1400 < cols[1]
    np.testing.assert_array_equal(view.data, big[rows[0] : rows[1], cols[0] : cols[1]])
    np.testing.assert_allclose(view.translate, [0.5 * rows[0], 0.5 * cols[0]])
    assert viewer.layers[VIEW_LAYER] is view
    # An RGB slide: rows and columns come before its channels (they were cut on the
    # columns and the channels).
    rgb = np.zeros((*big.shape, 3), np.uint8)
    rgb[..., 0] = (big / big.max() * 255).astype(np.uint8)
    viewer.add_image(rgb, name="rgb slide", rgb=True, scale=(0.5, 0.5))
    widget.reset_choices()
    widget._image.value = viewer.layers["rgb slide"]
    view = widget.tune_on_view()
    rows, cols = view.metadata["slide_region"]["rows"], view.metadata["slide_region"]["cols"]
    assert rows[0] <= 1200 < rows[1] and cols[0] <= 1400 < cols[1]
    np.testing.assert_array_equal(view.data, rgb[rows[0] : rows[1], cols[0] : cols[1]])


@pytest.mark.gui
def test_settings_block_mode_cannot_honour_are_refused(make_napari_viewer, slide, tmp_path):
    from napari_cellseg._widgets._inputs import CELLS_LAYER

    image, reference = slide
    viewer = make_napari_viewer()
    widget = make_widget(viewer, image, tmp_path / "o.zarr")
    cells = viewer.add_labels(reference, name=CELLS_LAYER)
    cells.metadata["parameters"] = {"seed_split": "shape", "h": 2.0, "sensitivity": 50.0}
    with pytest.raises(ValueError, match="shape split"):
        widget.run()
    cells.metadata["parameters"] = {"seed_split": "probability", "h_probability": 0.3, "sensitivity": 40.0,
                                    "h": 2.0, "cell_threshold": 0.45}
    assert widget.params() == {"sensitivity": 40.0, "h_probability": 0.3, "cell_threshold": 0.45}
    cells.metadata["parameters"] = {**cells.metadata["parameters"], "min_cell_area": 12.0}
    assert widget.params()["min_cell_area"] == 12.0  # tuned in Segment cells: it was dropped unsaid
    # Tuned at an estimated zoom: the slide runs at the model's grid, and says so.
    cells.metadata.update({"pixel_size_um": 0.31, "pixel_size_from": "estimated from the image"})
    assert "tuned at the zoom of 0.31 µm per pixel (estimated from the image); a slide runs at the " \
           "model's 0.5 µm" in widget._check_tuned_scale()
    cells.metadata.update({"pixel_size_um": 0.5})
    assert widget._check_tuned_scale() is None
    cells.metadata.update({"pixel_size_um": 0.65, "pixel_size_from": "image layer"})
    assert "0.65 µm per pixel (image layer)" in widget._check_tuned_scale()
    widget._workers.value = 2
    widget._scheduler.value = "tcp://127.0.0.1:1"
    with pytest.raises(ValueError, match="not both"):
        widget.run()
    widget._workers.value = 1
    widget._scheduler.value = ""
    widget._output.value = None
    with pytest.raises(ValueError, match="where to write"):
        widget.run()
