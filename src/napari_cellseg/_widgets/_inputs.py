"""What the widgets share: layer names (the viewer's vocabulary lives here, not in the
pipeline), the model inputs, and how a widget finds the prediction behind a layer.

No widget module imports another widget module; they all import from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, create_widget

from ._layers import finest_level, notify, one_channel, pixel_size_of

# Layer names. A re-run replaces the layer of its name (``show_layer``).
CELLS_LAYER = "cells"
SEEDS_LAYER = "seeds"
CLASSIC_LAYER = "classic cells"
PREPROCESSED_LAYER = "preprocessed"
SEED_PROBABILITY_LAYER = "seed probability"
CYTOPLASM_PROBABILITY_LAYER = "cytoplasm probability"
BACKGROUND_PROBABILITY_LAYER = "background probability"
TOUCH_PROBABILITY_LAYER = "touch probability"

# The Compare widget's layers: what -> layer name.
COMPARE_LAYERS = {"TP": "true positives", "FP": "false positives", "FN": "false negatives (missed)"}

# The Predict widget's maps: layer name -> (Prediction attribute, colour map, visible).
PROBABILITY_LAYERS = {
    SEED_PROBABILITY_LAYER: ("seed_probability", "magenta", True),
    CYTOPLASM_PROBABILITY_LAYER: ("cytoplasm_probability", "green", True),
    BACKGROUND_PROBABILITY_LAYER: ("background_probability", "gray", False),
    TOUCH_PROBABILITY_LAYER: ("touch_probability", "yellow", False),  # 4-class models only
}

# Display names of the keys of ``Prediction.stages()``; the seed enhancement is named by
# its kind (``Prediction.seed_enhancement``: "smoothed seed probability" or "LoG response").
STAGE_LAYERS = {
    "preprocessed": PREPROCESSED_LAYER,
    "seed_probability": SEED_PROBABILITY_LAYER,
    "cytoplasm_probability": CYTOPLASM_PROBABILITY_LAYER,
    "background_probability": BACKGROUND_PROBABILITY_LAYER,
    "seed_enhancement": None,
    "seed_mask": "seed mask",
    "seeds": SEEDS_LAYER,
    "cells": CELLS_LAYER,
}

# The metadata key under which a probability layer holds its cached Prediction.
PREDICTION_KEY = "prediction"
NO_MODEL = "(no model)"


def looks_like_truth(layer) -> bool:
    """True for a labels layer named like ground truth ("... ground truth", "x_masks", "gt")."""
    words = re.split(r"[\W_]+", layer.name.lower())
    return "truth" in words or "gt" in words or "masks" in words or "annotation" in words


def result_layers(layers: Iterable) -> list:
    """Labels layers that hold a segmentation to score or export, best first: the cells
    layer, the classic cells layer, then any other that is neither ground truth nor one
    of Compare's own layers."""
    layers = [layer for layer in layers if layer is not None]
    named = {layer.name: layer for layer in layers}
    first = [named[n] for n in (CELLS_LAYER, CLASSIC_LAYER) if n in named]
    rest = [layer for layer in layers if layer not in first and not looks_like_truth(layer)
            and layer.name not in COMPARE_LAYERS.values()]
    return first + rest


class LayerDefaults:
    """Defaults for layer ComboBoxes that follow the viewer's layers until the user picks
    one: ``pick()`` (called after every ``reset_choices``) applies ``rule`` to the combos
    the user has not touched."""

    def __init__(self, combos: dict, rule):
        self._combos, self._rule = combos, rule
        self.user_chose: set[str] = set()
        self._picking = False
        for key, combo in combos.items():
            combo.changed.connect(lambda *_, key=key: self._mark(key))

    def _mark(self, key: str) -> None:
        if not self._picking:
            self.user_chose.add(key)

    def run(self, action) -> None:
        """Run ``action`` (e.g. the container's reset_choices) without counting its value
        changes as the user's choice, then pick the defaults."""
        before = {key: combo.value for key, combo in self._combos.items()}
        self._picking = True
        try:
            action()
            for key, combo in self._combos.items():
                # The layer the user chose is gone (magicgui moved to the first one left,
                # e.g. the ground truth): the defaults apply again, a new cells layer included.
                if before[key] is not None and not any(c is before[key] for c in combo.choices):
                    self.user_chose.discard(key)
            self._rule(self.user_chose)
        finally:
            self._picking = False


def model_choices(*_) -> list[str]:
    """Names of the installed and saved models, for a ComboBox."""
    from ..model.registry import available_models

    return list(available_models()) or [NO_MODEL]


# Which built-in model for which image (each model card says more); fine-tuned models follow.
AUTO_TIP = ("auto (the default): dense_tcells_multiscale, or multiscale_nuclei where the network is "
            "surer of the image's cells with it (nuclei in a DNA stain); the cells layer records which. ")
MODEL_TIP = ("dense_tcells_multiscale (the default model): cells of most looks, at any scale. "
             "multiscale_nuclei: nuclei in a DNA stain (DAPI, Hoechst). "
             "dense_tcells_x2: dense surface-stained tissue at about 0.5 µm/px, slower. "
             "dense_tcells: the previous default, one scale. Then your fine-tuned models.")


class ModelComboBox(ComboBox):
    """A model list that refreshes itself when a model is saved (e.g. by the Train
    widget's worker): in the GUI thread, and only while its Qt widget exists."""

    def __init__(self, label: str = "Model", auto: bool = False, **kwargs):
        from ..choose import AUTO, CANDIDATES
        from ..model.registry import DEFAULT_MODEL, on_model_saved

        def choices(*_) -> list[str]:
            names = model_choices()
            # "auto" first, where it can run (both its models installed): what the API and
            # the CLI use without --model for one image or a batch.
            return [AUTO, *names] if auto and all(c in names for c in CANDIDATES) else names

        kwargs.setdefault("tooltip", (AUTO_TIP if auto else "") + MODEL_TIP)
        super().__init__(choices=choices, label=label, **kwargs)
        if auto and AUTO in self.choices:
            self.value = AUTO
        elif DEFAULT_MODEL in self.choices:  # what a slide runs without --model
            self.value = DEFAULT_MODEL
        self._alive = True
        self.native.destroyed.connect(self._on_destroyed)
        on_model_saved(self._on_model_saved)  # held weakly by the registry

    def _on_destroyed(self, *_) -> None:
        self._alive = False

    def _on_model_saved(self) -> None:
        from superqt.utils import ensure_main_thread

        ensure_main_thread(self._refresh)()  # a save may happen in a worker thread

    def _refresh(self) -> None:
        if self._alive:
            self.reset_choices()


def model_combo(label: str = "Model", auto: bool = False) -> ComboBox:
    """A :class:`ModelComboBox`: the model list every model-running widget shows; ``auto``:
    with the automatic choice first, the default (``choose.py``)."""
    return ModelComboBox(label, auto=auto)


def chosen_model(combo: ComboBox) -> str:
    """The model name of a :func:`model_combo`, or a clear error when none is installed."""
    if combo.value in (None, NO_MODEL):
        raise ValueError("no model is installed: train one (Train widget) or reinstall the package")
    return combo.value


def tuned_model(viewer) -> str | None:
    """The model the 'cells' layer's recorded parameters were tuned with (None: no such
    layer, no parameters recorded, untouched model defaults, or no model, e.g. hand-drawn).
    Untouched defaults are not tuned: 'auto's two models share them (choose.py's test)."""
    if CELLS_LAYER not in viewer.layers:
        return None
    meta = viewer.layers[CELLS_LAYER].metadata
    if not meta.get("parameters") or not meta.get("parameters_tuned", True):
        return None
    return meta.get("model")


def cells_layer_parameters(viewer, model: str | None) -> dict | None:
    """The segmentation parameters the 'cells' layer records (None: no such layer or none
    recorded). Tuned with another model than ``model`` (the one the run uses), they are
    refused in words: values tuned for one model's maps mean something else on another's."""
    if CELLS_LAYER not in viewer.layers:
        return None
    meta = viewer.layers[CELLS_LAYER].metadata
    saved = meta.get("parameters")
    if not saved:
        return None
    tuned_with = meta.get("model")
    from ..choose import AUTO

    if tuned_with and not meta.get("parameters_tuned", True):
        # The model's untouched defaults (no slider moved): the shipped models share them, and
        # a fine-tuned one keeps its starting model's (a Slide tuned on a view that 'auto' ran
        # with the nuclear model was refused for nothing).
        return dict(saved)
    if tuned_with and model == AUTO:
        raise ValueError(f"the '{CELLS_LAYER}' layer's parameters were tuned with the model {tuned_with!r}, "
                         "and 'auto' may choose another model per image: choose that model, or untick "
                         "'Use the cells layer's parameters'")
    if tuned_with and model not in (None, NO_MODEL) and tuned_with != model:
        raise ValueError(f"the '{CELLS_LAYER}' layer's parameters were tuned with the model {tuned_with!r}, "
                         f"not {model!r}: choose that model, or untick 'Use the cells layer's "
                         "parameters'")
    return dict(saved)


def channel_shape(layer) -> tuple[int, ...]:
    """The shape of :func:`image_data`'s array, from the layer's shape alone: a layer
    napari-cellseg cannot segment is refused before its pixels are read (in a worker)."""
    if layer is None:
        raise ValueError("no image layer selected: open an image first")
    data = finest_level(layer)
    shape = tuple(data.shape[:-1] if getattr(layer, "rgb", False) else data.shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) not in (2, 3):
        raise ValueError(f"layer {layer.name!r} has shape {shape}: napari-cellseg segments "
                         "2-D images and (planes, M, N) stacks plane by plane")
    return shape


def image_data(layer) -> np.ndarray:
    """A layer's pixels as one channel: 2-D, or (planes, M, N) for a stack."""
    shape = channel_shape(layer)
    return one_channel(layer).reshape(shape)


def prediction_of(layer):
    """The cached Prediction behind a probability layer, or a clear error."""
    pred = None if layer is None else layer.metadata.get(PREDICTION_KEY)
    if pred is None:
        raise ValueError(f"choose a probability layer made by the Predict widget "
                         f"(e.g. {SEED_PROBABILITY_LAYER!r}); run Predict first")
    return pred


# A pixel size field's step: magicgui takes its decimals from it, and 4 keep a 100x or 60x
# objective's 0.065 or 0.1083 µm as given (2 decimals made them 0.07 and 0.11: 8 % and
# 1.6 % off in the zoom, 16 % and 3 % in the areas).
PIXEL_SIZE_STEP = 0.0001
AUTO_SOURCE = "estimated from the image"  # where the scale came from, with the estimate on
NO_SCALE_REQUEST = (None, None, "image layer")  # ModelInputs.scale_request before any run


def pixel_size_field(tooltip: str | None = None) -> FloatSpinBox:
    """A pixel size in µm (0: none), as every widget that takes one shows it."""
    return FloatSpinBox(value=0.0, min=0.0, max=100.0, step=PIXEL_SIZE_STEP, label="Pixel size (µm)",
                        tooltip=tooltip)


def show_pixel_size(field: FloatSpinBox, size: float | None) -> float:
    """Put a layer's pixel size in ``field``; one the field cannot hold (a scale in nm,
    say 650 for 0.65 µm) leaves it at 0, said in a notification rather than raised in a
    signal handler. Returns the value shown."""
    size = float(size or 0.0)
    if size > field.max:
        notify(f"a pixel size of {size:g} µm (from the layer's scale or metadata) is beyond "
               f"{field.max:g} µm: not used; is the scale in nm? Type the pixel size in µm")
        size = 0.0
    field.value = size
    return float(field.value)


def diameter_fields(tooltip: str, unit_tooltip: str | None = None) -> tuple[FloatSpinBox, ComboBox]:
    """The cells' typical diameter (0: not used) and its unit, px or µm."""
    return (FloatSpinBox(value=0.0, min=0.0, max=1000.0, step=1.0, label="Cell diameter", tooltip=tooltip),
            ComboBox(value="px", choices=("px", "µm"), label="Diameter in", tooltip=unit_tooltip))


class ModelInputs:
    """The inputs every model-running widget shares: image, pixel size, model, device.

    The pixel size fills itself from the image layer's metadata or scale; the model
    list refreshes when a model is saved.
    """

    def __init__(self):
        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.pixel_size = pixel_size_field("from the image when it says; 0: the model's own")
        # On by default for an image that carries no pixel size (issue 15): without it, such
        # an image is taken at the model's scale, right only when its cells happen to match.
        self.auto_scale = CheckBox(value=True, text="Estimate the pixel size",
                                   tooltip="a few small trial passes find the scale at which the "
                                           "cells look like the model's; cells within a factor √2 "
                                           "of its size are left as they are. Typing a pixel size "
                                           "or a cell diameter turns it off (README, Known limits)")
        # Cellpose's "diameter": the size a biologist can read off the image with a ruler.
        # µm: for cells of another size than the model's in a calibrated image; the pixel
        # size (the layer's, or typed) turns it into pixels and still measures the µm.
        self.cell_diameter, self.diameter_unit = diameter_fields(
            "the cells' typical diameter, instead of a pixel size (px) or with it (µm); 0: not used",
            "px: this image's pixels; µm: with the pixel size above")
        self.model = model_combo(auto=True)
        self.device = ComboBox(value="auto", choices=("auto", "cpu", "cuda", "mps"), label="Device")
        self.image.changed.connect(self._on_image)
        self.auto_scale.changed.connect(self._on_auto)
        self.cell_diameter.changed.connect(self._on_typed)
        self.diameter_unit.changed.connect(self._on_scale_choice)
        self.pixel_size.changed.connect(self._on_typed)
        self._on_image()
        self._on_scale_choice()

    @property
    def widgets(self) -> list:
        return [self.image, self.pixel_size, self.cell_diameter, self.diameter_unit, self.auto_scale,
                self.model, self.device]

    @property
    def pixel_size_um(self) -> float | str | None:
        """What to pass as the pixel size: µm, "auto" (estimate it) or None (the model's,
        or derived from the cell diameter: :attr:`scale_kwargs`)."""
        if self.auto_scale.value:
            return "auto"
        if self.cell_diameter.value:
            return None
        return float(self.pixel_size.value) or None

    @property
    def diameter_px(self) -> float | None:
        """The cell diameter in pixels when it sets the scale (None: it does not); one in
        µm without a pixel size is an error in words."""
        if not self.cell_diameter.value or self.auto_scale.value:
            return None
        if self.diameter_unit.value == "px":
            return float(self.cell_diameter.value)
        if not self.pixel_size.value:
            raise ValueError("a cell diameter in µm needs the image's pixel size: type it in "
                             "'Pixel size (µm)', or give the diameter in px")
        return float(self.cell_diameter.value) / float(self.pixel_size.value)

    @property
    def scale_kwargs(self) -> dict:
        """Extra arguments of ``iter_predict``: the cell diameter, when it sets the scale."""
        diameter = self.diameter_px
        return {} if diameter is None else {"cell_diameter_px": diameter}

    @property
    def scale_source(self) -> str | None:
        """Where the scale came from, for the layers' metadata (None: a pixel size or the model's)."""
        if self.auto_scale.value:
            return AUTO_SOURCE
        if self.cell_diameter.value:
            if self.diameter_unit.value == "µm":
                return f"cell diameter {self.cell_diameter.value:g} µm ({self.diameter_px:.3g} px)"
            return f"cell diameter {self.cell_diameter.value:g} px"
        return None

    def scale_request(self) -> tuple[str | None, float | None, str]:
        """What a run was asked, taken when it starts (later edits belong to the next run):
        where the model's zoom comes from, the pixel size that measures the µm and where that
        came from (the image layer's own, or the field's, which a diameter in µm used)."""
        layer_size = pixel_size_of(self.image.value)
        if self.cell_diameter.value and self.diameter_unit.value == "µm" and not self.auto_scale.value:
            typed = float(self.pixel_size.value)
            return self.scale_source, typed, "image layer" if typed == layer_size else "pixel size field"
        return self.scale_source, layer_size, "image layer"

    def _on_scale_choice(self, *_) -> None:
        """One way to set the scale at a time: the estimate, else a diameter, else a pixel size."""
        auto, diameter = bool(self.auto_scale.value), bool(self.cell_diameter.value)
        # A diameter in µm needs the pixel size: it stays open then.
        self.pixel_size.enabled = not (auto or (diameter and self.diameter_unit.value == "px"))

    def _on_auto(self, *_) -> None:
        """Checking the estimate clears a diameter (it would not be used)."""
        if self.auto_scale.value and self.cell_diameter.value:
            self.cell_diameter.value = 0.0
        self._on_scale_choice()

    def _on_typed(self, value=None) -> None:
        """A pixel size or a diameter typed (or read from the image) replaces the estimate."""
        if value:
            self.auto_scale.value = False
        self._on_scale_choice()

    @property
    def model_name(self) -> str:
        return chosen_model(self.model)

    def _on_image(self, *_) -> None:
        """The image's own pixel size fills the field (and turns the estimate off); an image
        without one is estimated, unless a cell diameter is set."""
        if not show_pixel_size(self.pixel_size, pixel_size_of(self.image.value)):
            self.auto_scale.value = not self.cell_diameter.value


def model_metadata(prediction, asked: str | None) -> dict:
    """The model a result layer records: the one the prediction ran (for ``"auto"``, the
    one chosen, with the choice's figures), else the name asked for."""
    out = {"model": prediction.model_name or asked}
    if prediction.model_choice is not None:
        out["model_choice"] = prediction.model_choice.to_dict()
    return out


def scale_metadata(prediction, request: tuple) -> dict:
    """The pixel size a result layer records (what its µm are measured in). An estimate or
    a cell diameter sets the model's zoom only: the image layer's own pixel size, when it
    has one, still measures the µm (as ``batch`` does with a file's)."""
    source, layer_size, size_from = request
    if source == AUTO_SOURCE and prediction.pixel_size is None:  # not estimated: its warning says why
        source = "the model's pixel size (" + (
            "no estimate used: see 'warnings'" if prediction.warnings else "nothing to estimate it from") + ")"
    extra = {"warnings": list(prediction.warnings)} if prediction.warnings else {}
    scale = prediction.scale
    if scale is not None and scale.kept_model_scale:  # what was measured, not only the model's size
        extra["measured_pixel_size_um"] = scale.measured_pixel_size
    if source and layer_size:
        return {"pixel_size_um": layer_size, "pixel_size_from": size_from, "scale_from": source,
                "scale_pixel_size_um": prediction.pixel_size, **extra}
    return {"pixel_size_um": prediction.pixel_size, "pixel_size_from": source, **extra}
