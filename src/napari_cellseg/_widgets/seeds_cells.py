"""Seeds and Cells stages: live re-segmentation from a cached prediction.

A parameter move re-runs the stage at once when the prediction's hierarchies for it are
built (milliseconds), else builds them and re-runs in a worker: never on the GUI thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    create_widget,
)

from ._inputs import (
    CELLS_LAYER,
    PREDICTION_KEY,
    SEED_PROBABILITY_LAYER,
    SEEDS_LAYER,
    LayerDefaults,
    prediction_of,
)
from ._layers import show_layer
from ._runner import LiveUpdate, reports_errors, status_label
from ._seed_controls import SeedControls

if TYPE_CHECKING:
    import napari


class _LiveStage(Container):
    """A stage that re-runs from the cached prediction whenever a parameter moves."""

    layer_name: str  # the layer the stage draws

    def __init__(self, viewer: napari.viewer.Viewer, controls: list, title: str):
        super().__init__()
        self._viewer = viewer
        self._source = create_widget(label="Prediction", annotation="napari.layers.Image")
        # The seed probability layer, also when Predict runs after this widget was opened,
        # until the user picks another.
        self._defaults = LayerDefaults({"source": self._source}, self._pick_source)
        self._defaults.run(lambda: None)
        self._live = CheckBox(value=True, text="Update live")
        self._status = status_label()
        self._updater = LiveUpdate(title, self._status)
        self.extend([self._source, *controls, self._live, self._status])
        from superqt.utils import qdebounced

        self._debounced = qdebounced(reports_errors(self._update_if_ready, title, self._status), timeout=40)
        for w in controls:
            w.changed.connect(self._on_param)
        self._source.changed.connect(self._use_model_defaults)
        self._source.changed.connect(lambda *_: self._updater.drop())  # its results are for the old one
        self._use_model_defaults()

    def reset_choices(self, *args) -> None:
        self._defaults.run(lambda: super(_LiveStage, self).reset_choices(*args))

    def _pick_source(self, user_chose: set[str]) -> None:
        if "source" not in user_chose and SEED_PROBABILITY_LAYER in self._viewer.layers:
            self._source.value = self._viewer.layers[SEED_PROBABILITY_LAYER]

    def _metadata(self, stage: str, params: dict) -> dict:
        """A result layer's metadata: the prediction's record (source image, model, pixel
        size) and this stage's parameters."""
        record = {k: v for k, v in self._source.value.metadata.items() if k not in (PREDICTION_KEY, "stage")}
        return {**record, "stage": stage, "parameters": params}

    def _still_current(self, layer, pred) -> bool:
        """A result computed from ``pred`` (in ``layer``) is shown only while that is still
        the chosen prediction: a worker's result arrives after the user picked another
        layer, or after Predict ran again and refilled the layer with a new prediction."""
        if self._source.value is layer and layer.metadata.get(PREDICTION_KEY) is pred:
            return True
        self._status.value = "a result of an earlier prediction was dropped: move a slider or run again"
        return False

    def _use_model_defaults(self, *_) -> None:
        """Start the controls at the model's tuned defaults."""
        layer = self._source.value
        pred = None if layer is None else layer.metadata.get(PREDICTION_KEY)
        if pred is not None:
            self._show_defaults(pred.defaults)

    def _show_defaults(self, defaults) -> None:
        """Set the controls to a SegmentParams without re-running."""

    def _on_param(self, *_) -> None:
        if self._live.value:
            self._debounced()

    def _update_if_ready(self) -> None:
        if self._source.value is not None and self._source.value.metadata.get(PREDICTION_KEY) is not None:
            self.run()
        else:  # a slider moved with nothing to re-run: say why nothing changes
            self._status.value = ("no prediction to update: run '1. Preprocess and predict' first, or "
                                  f"choose its {SEED_PROBABILITY_LAYER!r} layer as Prediction")

    def _request(self, pred, params: dict, work, show):
        """``show(work())`` now when the hierarchies are built, else after a worker built
        them; returns the stage's layer when shown now, else None."""
        if self._updater.request(pred, pred.params(**params), work, show):
            return self._viewer.layers[self.layer_name]
        return None


class SeedsWidget(_LiveStage):
    """Seeds: split method, sensitivity and h; LoG scales for the paper's shape split."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self._seeds = SeedControls()
        self._dmin = FloatSpinBox(value=0.0, min=0.0, max=100.0, step=0.5, label="Seed Ø min (µm)",
                                  tooltip="0: from the model's cell diameter")
        self._dmax = FloatSpinBox(value=0.0, min=0.0, max=200.0, step=0.5, label="Seed Ø max (µm)")
        super().__init__(viewer, [*self._seeds.widgets, self._dmin, self._dmax], "Seeds")

    def _show_defaults(self, defaults) -> None:
        self._seeds.set_defaults(defaults)

    def params(self) -> dict:
        p = self._seeds.params()
        if self._dmin.value > 0 and self._dmax.value > 0:
            p["seed_diameter"] = (float(self._dmin.value), float(self._dmax.value))
        return p

    layer_name = SEEDS_LAYER

    def run(self, *_):
        """Seeds (and the map they were found in) as layers; the seeds layer when shown now."""
        like = self._source.value
        pred = prediction_of(like)
        params = self.params()
        meta = self._metadata("seeds", params)  # the prediction's record now, not when shown

        def work():
            kind, enhancement = pred.seed_enhancement(pred.params(**params))
            return pred.seeds_input(**params), kind, pred.to_input(enhancement)

        def show(result) -> None:
            if not self._still_current(like, pred):
                return
            seeds, kind, enhancement = result
            show_layer(self._viewer, enhancement, kind, "image", metadata=meta, like=like, visible=False)
            show_layer(self._viewer, seeds, SEEDS_LAYER, "labels", metadata=dict(meta), like=like)
            self._status.value = f"{int(seeds.max())} seeds"

        return self._request(pred, params, work, show)


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
        super().__init__(viewer, [self._background, self._threshold, self._intensity, self._min_area], "Cells")
        # The cells follow the seeds: when the Seeds stage redraws its layer (its metadata
        # holds the seed parameters), the cells are redrawn from them, as a slider here does.
        self._watched = None
        viewer.layers.events.inserted.connect(self._watch_seeds)
        self._watch_seeds()

    def _watch_seeds(self, *_) -> None:
        layer = self._viewer.layers[SEEDS_LAYER] if SEEDS_LAYER in self._viewer.layers else None  # noqa: SIM401 (a LayerList has no get)
        if layer is not None and layer is not self._watched:
            layer.events.metadata.connect(self._on_param)
            self._watched = layer

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

    layer_name = CELLS_LAYER

    def run(self, *_):
        """Cells as a layer; the layer when shown now, else None (a worker shows it)."""
        like = self._source.value
        pred = prediction_of(like)
        params = self.params()
        meta = self._metadata("cells", params)  # the prediction's record now, not when shown
        meta["parameters_used"] = pred.params(**params).to_dict()  # the model's defaults applied

        def show(cells) -> None:
            if not self._still_current(like, pred):
                return
            show_layer(self._viewer, cells, CELLS_LAYER, "labels", metadata=meta, like=like)
            self._status.value = f"{int(cells.max())} cells"

        return self._request(pred, params, lambda: pred.segment(**params), show)
