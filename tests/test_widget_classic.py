"""The classic widget in a real napari viewer (Xvfb)."""

import numpy as np
import pytest

from napari_cellseg.core import synthetic as syn

pytestmark = pytest.mark.gui


def test_classic_widget_live_sliders(make_napari_viewer, qtbot):
    from napari_cellseg._widgets._inputs import CLASSIC_LAYER
    from napari_cellseg._widgets.classic import ClassicWidget

    viewer = make_napari_viewer()
    viewer.add_image(syn.make_image()[0], name="lesson")
    widget = ClassicWidget(viewer)
    viewer.window.add_dock_widget(widget)
    layer = widget.run()
    assert layer.name == CLASSIC_LAYER and layer.data.max() == 8
    assert layer.metadata["parameters"]["threshold"] == pytest.approx(0.5)
    # Moving a slider re-segments live (once it pauses), in the same layer.
    widget._threshold.value = float(syn.make_image()[0].max()) + 0.01
    qtbot.waitUntil(lambda: viewer.layers[CLASSIC_LAYER].data.max() == 0, timeout=5000)
    widget._threshold.value = 0.5
    qtbot.waitUntil(lambda: viewer.layers[CLASSIC_LAYER].data.max() == 8, timeout=5000)
    assert [lyr.name for lyr in viewer.layers].count(CLASSIC_LAYER) == 1
    assert "8 cells" in widget._status.value


def test_classic_widget_debounces_slider_ticks(make_napari_viewer, qtbot, monkeypatch):
    from napari_cellseg._widgets._inputs import CLASSIC_LAYER
    from napari_cellseg._widgets.classic import ClassicWidget
    from napari_cellseg.core import classic

    viewer = make_napari_viewer()
    viewer.add_image(syn.make_image()[0], name="lesson")
    widget = ClassicWidget(viewer)
    calls = []
    original = classic.segment_classic

    def counted(image, **params):
        calls.append(params)
        return original(image, **params)

    monkeypatch.setattr(classic, "segment_classic", counted)
    for value in (0.2, 0.3, 0.4, 0.5, 0.6):  # a drag: five ticks in a row
        widget._threshold.value = value
    widget._sigma.value = 1.5
    qtbot.waitUntil(lambda: len(calls) >= 1, timeout=5000)
    qtbot.wait(300)  # longer than the debounce: no late second run
    assert len(calls) == 1
    assert calls[0]["threshold"] == pytest.approx(0.6) and calls[0]["sigma"] == pytest.approx(1.5)
    assert viewer.layers[CLASSIC_LAYER].metadata["parameters"] == calls[0]


def test_classic_widget_on_rgb_and_stack(make_napari_viewer):
    from napari_cellseg._widgets.classic import ClassicWidget

    viewer = make_napari_viewer()
    img = syn.make_image()[0]
    rgb = np.zeros((*img.shape, 3), np.float32)
    rgb[..., 0] = img
    viewer.add_image(rgb, rgb=True, name="rgb")
    widget = ClassicWidget(viewer)
    viewer.window.add_dock_widget(widget)  # docked widgets follow the layer list
    widget._threshold.value = 0.5
    assert widget.run().data.max() == 8
    stack = np.stack([np.zeros_like(img), img])
    viewer.layers.clear()
    viewer.add_image(stack, name="stack")
    widget._image.value = viewer.layers["stack"]
    viewer.dims.set_current_step(0, 1)
    assert widget.run().data.max() == 8
    viewer.dims.set_current_step(0, 0)
    assert widget.run().data.max() == 0


def test_plugin_manifest_lists_widgets_and_samples():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-cellseg")
    names = {w.display_name for w in manifest.contributions.widgets}
    assert "Classic segmentation" in names
    assert {s.key for s in manifest.contributions.sample_data} >= {"lesson", "tissue", "whole_cell"}


def test_sample_data_opens_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellseg", "tissue")
    kinds = {type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"Image", "Labels"}
    assert viewer.layers["synthetic tissue ground truth"].data.max() > 500


def test_writer_refuses_to_overwrite(tmp_path):
    from napari_cellseg._writer import write_labels_layer

    labels = np.zeros((10, 10), np.int32)
    labels[2:5, 2:5] = 3
    path = tmp_path / "cells.tif"
    assert write_labels_layer(str(path), labels, {}) == [str(path)]
    with pytest.raises(FileExistsError):
        write_labels_layer(str(path), labels, {})
