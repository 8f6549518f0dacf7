"""The model for an image when none is named: the default, or the nuclear one if the
image looks like nuclei in a DNA stain.

Two shipped models share one network and grid: ``dense_tcells_multiscale`` (the default:
cells of most looks) and ``multiscale_nuclei`` (the default fine-tuned with synthetic
nuclei). The nuclear model scores 0.793 against 0.646 on the unseen nuclear image of the
issue "Your cells, not only ours" and 0.763 against 0.720 over four real nuclear sets, but
its 5-fold CV on the dense set is 0.009 lower (model card), so it cannot simply replace the
default. :func:`choose_model` lets the network say which it is: the busiest crops of the
image at the zoom the pipeline applies, each model's mean confidence over the pixels it
calls cell (:func:`napari_cellseg.scale.pooled_confidence`); the nuclear model is taken
when it is surer by at least :data:`MARGIN`. Cellpose 2 chose among its model zoo by the
image's style vector in the same spirit.

Measured 2026-11-24, the nuclear model's confidence minus the default's (scratch scripts,
the figures in the README's "Which model: chosen by look"):

* the dense set's 35 held-out CV bands (each fold's own pair of models, the pixel size
  known or estimated): -0.009 to +0.005, so none switches and the CV figure is the
  default's, 0.622, exactly;
* the DSB nuclear image +0.038; HeLa -0.003 to +0.076 (3 of 4 switch), GOWT1 -0.016 to
  +0.014 (2 of 6), NIH3T3 +0.005 to +0.094 (16 of 18).

MARGIN is about twice the largest dense difference. It was set with the nuclear sets in
view, and there is no further held-out set to check it on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model.registry import AUTO_MODEL, DEFAULT_MODEL

AUTO = AUTO_MODEL  # the model name that asks for the choice (None does too)

NUCLEAR_MODEL = "multiscale_nuclei"
CANDIDATES = (DEFAULT_MODEL, NUCLEAR_MODEL)
MARGIN = 0.01  # the nuclear model must be this much surer of the cells (mean probability)


@dataclass(frozen=True)
class ModelChoice:
    """What :func:`choose_model` found: the model's name, each candidate's confidence
    (0 where no crop showed cells) and the zoom the crops were taken at."""

    name: str
    scores: dict[str, float]
    zoom: float

    @property
    def measured(self) -> bool:
        """False when no crop showed either model any cells (the default, by default)."""
        return any(v > 0.0 for v in self.scores.values())

    def to_dict(self) -> dict:
        return {"chosen": self.name, "confidence": {k: round(v, 4) for k, v in self.scores.items()},
                "margin": MARGIN, "zoom": round(self.zoom, 4)}


def is_auto(model) -> bool:
    """``model`` asks for the choice: None (the default) or ``"auto"``."""
    return model is None or (isinstance(model, str) and model == AUTO)


def choose_model(image: np.ndarray, zoom: float = 1.0, device: str = "auto",
                 tophat_px: float | None = None, memo: dict | None = None) -> ModelChoice:
    """The candidate model for ``image`` (one 2-D channel) at ``zoom`` (image px -> model
    grid px, as the pipeline applies it), each crop top-hat filtered with a radius of
    ``tophat_px`` grid pixels when given (as the pipeline's ``tophat_um`` does). ``memo``:
    the network passes already run on this image (``scale.trial_predictions``).

    Raises
    ------
    FileNotFoundError
        A candidate's weights are missing (a broken install).
    """
    from .model.store import resolve_model
    from .scale import pooled_confidence, trial_predictions

    image = np.asarray(image, dtype=np.float32)
    memo = {} if memo is None else memo  # the crops made once for both candidates
    scores = {}
    for name in CANDIDATES:
        # The auto scale's trial crops, as the network will see them.
        crops = trial_predictions(image, zoom, *resolve_model(name), device, tophat_px=tophat_px, memo=memo)
        scores[name] = pooled_confidence([probs for _, probs in crops])  # 0 without crops
    return ModelChoice(decide(scores), scores, float(zoom))


def decide(scores: dict[str, float]) -> str:
    """The rule: the nuclear model where it is surer of the cells by at least ``MARGIN``,
    else the default (also when no crop showed cells: all scores 0)."""
    nuclear = scores[NUCLEAR_MODEL] > 0 and scores[NUCLEAR_MODEL] - scores[DEFAULT_MODEL] >= MARGIN
    return NUCLEAR_MODEL if nuclear else DEFAULT_MODEL


def auto_record() -> dict:
    """What a result made with the choice was asked for: the candidates' records (name,
    file, SHA-256) and the margin (batch's resume compares it)."""
    from .model.store import model_record

    return {"name": AUTO, "candidates": [model_record(name) for name in CANDIDATES], "margin": MARGIN}
