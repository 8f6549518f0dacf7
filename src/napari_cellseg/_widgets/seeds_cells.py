"""Seeds and Cells stages: live re-segmentation from a cached prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    create_widget,
)

from ._layers import show_layer
from ._seed_controls import SeedControls
from .predict import prediction_of

if TYPE_CHECKING:
    import napari

SEEDS_LAYER = "seeds"
CELLS_LAYER = "cells"


class _LiveStage(Container):
    """A stage that re-runs from the cached prediction whenever a parameter moves."""

    def __init__(self, viewer: napari.viewer.Viewer, controls: list):
        super().__init__()
        self._viewer = viewer
        self._source = create_widget(label="Prediction", annotation="napari.layers.Image")
        if "seed probability" in viewer.layers:
            self._source.value = viewer.layers["seed probability"]
        self._live = CheckBox(value=True, text="Update live")
        self._status = Label(value="")
        self.extend([self._source, *controls, self._live, self._status])
        from superqt.utils import qdebounced

        self._debounced = qdebounced(self._update_if_ready, timeout=40)
        for w in controls:
            w.changed.connect(self._on_param)
        self._source.changed.connect(self._use_model_defaults)
        self._use_model_defaults()

    def _use_model_defaults(self, *_) -> None:
        """Start the controls at the model's tuned defaults."""
        layer = self._source.value
        pred = None if layer is None else layer.metadata.get("prediction")
        if pred is not None:
            self._show_defaults(pred.defaults)

    def _show_defaults(self, defaults) -> None:
        """Set the controls to a SegmentParams without re-running."""

    def _on_param(self, *_) -> None:
        if self._live.value:
            self._debounced()

    def _update_if_ready(self) -> None:
        if self._source.value is not None and self._source.value.metadata.get("prediction") is not None:
            self.run()


class SeedsWidget(_LiveStage):
    """Seeds: split method, sensitivity and h; LoG scales for the paper's shape split."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self._seeds = SeedControls()
        self._dmin = FloatSpinBox(value=0.0, min=0.0, max=100.0, step=0.5, label="Seed Ø min (µm)",
                                  tooltip="0: from the model's cell diameter")
        self._dmax = FloatSpinBox(value=0.0, min=0.0, max=200.0, step=0.5, label="Seed Ø max (µm)")
        super().__init__(viewer, [*self._seeds.widgets, self._dmin, self._dmax])

    def _show_defaults(self, defaults) -> None:
        self._seeds.set_defaults(defaults)

    def params(self) -> dict:
        p = self._seeds.params()
        if self._dmin.value > 0 and self._dmax.value > 0:
            p["seed_diameter"] = (float(self._dmin.value), float(self._dmax.value))
        return p

    def run(self, *_):
        pred = prediction_of(self._source.value)
        params = pred.params(**self.params())
        seeds = pred.to_input(pred.seeds(params), order=0)
        name, enhancement = pred.seed_enhancement(params)
        show_layer(self._viewer, pred.to_input(enhancement), name, "image", metadata={"stage": "seeds"},
                   visible=False)
        layer = show_layer(self._viewer, seeds, SEEDS_LAYER, "labels",
                           metadata={"stage": "seeds", "parameters": self.params()})
        self._status.value = f"{int(seeds.max())} seeds"
        return layer


class CellsWidget(_LiveStage):
    """Cells: seeded watershed, one cell per seed; background and minimum size."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self._background = ComboBox(value="probability", choices=("probability", "otsu3"), label="Background",
                                    tooltip="probability: cell probability above the threshold (default); "
                                            "otsu3: the paper's 3-level Otsu rule")
        self._threshold = FloatSlider(value=0.4, min=0.05, max=0.95, step=0.05, label="Cell threshold",
                                      tooltip="cell probability above which a pixel can be a cell")
        self._intensity = FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, label="Intensity weight",
                                      tooltip="0: cell probability alone; 1: × the paper's image transform")
        self._min_area = FloatSpinBox(value=0.0, min=0.0, max=10000.0, step=1.0, label="Min cell area (µm²)",
                                      tooltip="0: a fifth of a typical cell")
        super().__init__(viewer, [self._background, self._threshold, self._intensity, self._min_area])

    def _show_defaults(self, defaults) -> None:
        with self._background.changed.blocked(), self._threshold.changed.blocked():
            self._background.value = defaults.background
            self._threshold.value = float(defaults.cell_threshold)

    def params(self) -> dict:
        # The seeds as the Seeds widget last drew them, else the defaults.
        seed_params = {}
        if SEEDS_LAYER in self._viewer.layers:
            seed_params = dict(self._viewer.layers[SEEDS_LAYER].metadata.get("parameters", {}))
        p = {**seed_params, "background": self._background.value,
             "cell_threshold": float(self._threshold.value), "intensity_weight": float(self._intensity.value)}
        if self._min_area.value > 0:
            p["min_cell_area"] = float(self._min_area.value)
        return p

    def run(self, *_):
        pred = prediction_of(self._source.value)
        params = self.params()
        cells = pred.segment(**params)
        layer = show_layer(self._viewer, cells, CELLS_LAYER, "labels",
                           metadata={"stage": "cells", "parameters": params})
        self._status.value = f"{int(cells.max())} cells"
        return layer
