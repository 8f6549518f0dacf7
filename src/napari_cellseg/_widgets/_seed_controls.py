"""The seed controls both live widgets share: split method, sensitivity and the h of the
active method (µm for the paper's shape split, probability for the default split)."""

from __future__ import annotations

from magicgui.widgets import ComboBox, FloatSlider, Slider

from ..core.params import DEFAULT_H_PROBABILITY, DEFAULT_H_UM, DEFAULT_SENSITIVITY, SPLIT_METHODS


class SeedControls:
    """Widgets and the parameters they set; only the h of the chosen split is shown."""

    def __init__(self):
        self.split = ComboBox(value="probability", choices=SPLIT_METHODS, label="Seed split",
                              tooltip="probability: maxima of the seed probability (default, best "
                                      "measured); shape: the paper's LoG + distance watershed")
        self.sensitivity = Slider(value=int(DEFAULT_SENSITIVITY), min=0, max=100, step=5,
                                  label="Sensitivity",
                                  tooltip="higher: more seeds, fainter cells. Probability split: seeds where "
                                          "the seed probability exceeds 1 - sensitivity/100, and 0.1 at "
                                          "least (90-100 are the same). Shape split: 5 Otsu levels "
                                          "(steps of 20)")
        self.h = FloatSlider(value=DEFAULT_H_UM, min=0.0, max=10.0, step=0.25, label="h (µm)",
                             tooltip="shape split: the depth (µm) of the dip in the distance transform "
                                     "that keeps two seeds of one blob apart; higher merges more. A dip "
                                     "is never deeper than the seed's radius: above it nothing more "
                                     "merges")
        self.h_probability = FloatSlider(value=DEFAULT_H_PROBABILITY, min=0.0, max=1.0, step=0.05,
                                         label="h (probability)",
                                         tooltip="probability split: the dip between two seeds that keeps "
                                                 "them apart; higher merges more seeds")
        self.split.changed.connect(self._show_active_h)
        self._show_active_h()

    @property
    def widgets(self) -> list:
        return [self.split, self.sensitivity, self.h, self.h_probability]

    @property
    def changed(self) -> list:
        """Signals to connect re-segmentation to."""
        return [w.changed for w in self.widgets]

    def _show_active_h(self, *_) -> None:
        shape = self.split.value == "shape"
        self.h.visible = shape
        self.h_probability.visible = not shape

    def params(self) -> dict:
        return {"seed_split": self.split.value, "sensitivity": float(self.sensitivity.value),
                "h": float(self.h.value), "h_probability": float(self.h_probability.value)}

    def set_defaults(self, defaults) -> None:
        """Show a model's defaults (a SegmentParams) without triggering re-segmentation."""
        widgets = self.widgets
        for w in widgets:
            w.changed.block()
        try:
            self.split.value = defaults.seed_split
            self.sensitivity.value = round(defaults.sensitivity)
            self.h.value = float(defaults.h)
            self.h_probability.value = float(defaults.h_probability)
        finally:
            for w in widgets:
                w.changed.unblock()
        self._show_active_h()
