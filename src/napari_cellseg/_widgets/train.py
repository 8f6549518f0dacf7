"""Train / fine-tune in the viewer: the current image and a corrected labels layer (or
a folder of image / mask pairs), live loss and validation figures, a named model.

The quick path: annotate the cells of one region (or correct a few cells) in a labels
layer, press Train: it fine-tunes on that region within a time budget (5 minutes by
default) and then re-segments the whole image with the new model, as a layer beside the
old cells."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    SpinBox,
    create_widget,
)

from ..progress import Progress
from ._inputs import MODEL_TIP, model_choices
from ._layers import image_plane, layer_array, pixel_size_of, show_layer, view_plane
from ._runner import Runner

if TYPE_CHECKING:
    import napari

FROM_SCRATCH = "(from scratch)"


class TrainWidget(Container):
    """Fine-tune a model on corrected labels; the result joins the model lists."""

    def __init__(self, viewer: napari.viewer.Viewer):
        from ..model.registry import DEFAULT_MODEL

        super().__init__()
        self._viewer = viewer
        self._run_image = None  # the image layer of the run in progress (its cells lie on it)
        self._plane: list[int] | None = None  # the plane of a stack trained on (_pairs)
        self._image = create_widget(label="Image", annotation="napari.layers.Image")
        self._labels = create_widget(label="Corrected labels", annotation="napari.layers.Labels")
        self._use_folder = CheckBox(value=False, text="Train on a folder of pairs instead")
        self._folder = FileEdit(mode="d", label="Pairs folder", nullable=True,
                                tooltip="x.tif with x_masks.tif ...")
        self._init = ComboBox(choices=lambda *_: [*model_choices(), FROM_SCRATCH], label="Start from",
                              tooltip=MODEL_TIP)
        if DEFAULT_MODEL in self._init.choices:  # the README's promise: it fine-tunes
            self._init.value = DEFAULT_MODEL
        self._region = CheckBox(value=True, text="Only the annotated region", tooltip=(
            "train on the box around the labelled cells, plus 16 px of context (every cell "
            "reaching into it must be labelled: unlabelled pixels there are taught as background)"))
        self._epochs = SpinBox(value=40, min=1, max=1000, label="Epochs")
        self._steps = SpinBox(value=20, min=1, max=10000, label="Steps per epoch")
        self._minutes = FloatSpinBox(value=5.0, min=0.0, max=24 * 60.0, step=1.0, label="Time budget (min)",
                                     tooltip="training stops within this time (0: run every epoch)")
        self._resegment = CheckBox(value=True, text="Re-segment the image with the new model")
        self._name = LineEdit(value="my_model", label="Save as")
        self._runner = Runner("Train", "Training")
        self.extend([self._image, self._labels, self._region, self._use_folder, self._folder, self._init,
                     self._epochs, self._steps, self._minutes, self._resegment, self._name,
                     *self._runner.widgets])
        self._runner.on_run(self.run)
        # "Start from" follows the model the corrected cells came from (the one 'auto' chose,
        # e.g. multiscale_nuclei for nuclei), until the user picks one.
        self._init_picked = False
        self._following = False
        self._init.changed.connect(self._on_init_picked)
        self._labels.changed.connect(self._follow_labels_model)
        self._follow_labels_model()
        self.saved: Path | None = None
        self.history: list[dict] = []
        self._budget = (time.monotonic(), 0.0)  # (start, seconds) of the run in progress

    def _on_init_picked(self, *_) -> None:
        if not self._following:
            self._init_picked = True

    def _follow_labels_model(self, *_) -> None:
        layer = self._labels.value
        model = layer.metadata.get("model") if layer is not None else None
        if self._init_picked or model not in self._init.choices:
            return
        self._following = True
        try:
            self._init.value = model
        finally:
            self._following = False

    def _pairs(self) -> tuple[list, float | None, np.ndarray | None]:
        """(name, image, labels) pairs, their pixel size (None: unknown) and the whole
        image they come from (None for a folder)."""
        if self._use_folder.value:
            from ..io import load_pairs, pairs_pixel_size

            if self._folder.value is None:
                raise ValueError("choose the folder of image / mask pairs")
            folder = Path(self._folder.value)
            # The pixel size the files state (as a layer's own is used below), else unknown.
            try:
                pixel_size = pairs_pixel_size(folder, folder)
            except ValueError as err:  # the CLI's advice (--pixel-size) has no field here
                raise ValueError(f"{err}. Here: resample the images to one pixel size, or train "
                                 "from the command line with --pixel-size") from err
            return load_pairs(folder, folder), pixel_size, None
        layer = self._image.value
        if layer is None:
            raise ValueError("choose the image layer")
        labels = self._labels.value
        if labels is None:
            raise ValueError("choose the corrected labels layer")
        data = layer_array(labels)
        if data.ndim == 2:
            # Cells cut from one plane of a stack carry it: that plane, not the one in view now.
            self._plane = labels.metadata.get("plane") or view_plane(layer, self._viewer)
        else:  # corrected cells of a whole stack: the plane in view of both
            self._plane = view_plane(labels, self._viewer)
            data = data[tuple(self._plane)] if self._plane and data.ndim == len(self._plane) + 2 else data
        image = image_plane(layer, self._viewer, plane=self._plane)
        if data.shape != image.shape:
            raise ValueError(f"labels {data.shape} and image {image.shape} differ in shape")
        data = np.array(data)  # a copy: painting on during training must not change what it trains on
        # What it trained on, the plane of a stack included.
        name = layer.name + (f"[plane {', '.join(map(str, self._plane))}]" if self._plane else "")
        if self._region.value:
            from ..workflows.training import annotated_region

            rows, cols = annotated_region(data)
            name = f"{name}[{rows.start}:{rows.stop}, {cols.start}:{cols.stop}]"
            return [(name, image[rows, cols], data[rows, cols])], pixel_size_of(layer), image
        return [(name, image, data)], pixel_size_of(layer), image

    def run(self, *_):
        """Train in a worker: per-step progress, Cancel within a step."""
        if not self._init_picked:  # the labels layer's model, as it is now (updated in place)
            self._follow_labels_model()
        from ..model.train import TrainConfig

        init = None if self._init.value == FROM_SCRATCH else self._init.value
        # A fine-tune: lr 1e-4 and batch-norm statistics frozen at the start model's. On one
        # annotated crop (benchmarks/finetune.py, 2026-11-23) they lost 0.084 on the dense
        # look the model knows where lr 3e-4 with free statistics lost 0.147, and gained
        # 0.112 on an unseen look where it gained 0.093.
        cfg = TrainConfig(epochs=int(self._epochs.value), steps_per_epoch=int(self._steps.value),
                          batch=8, lr=1e-4 if init else 1e-3, freeze_norm=init is not None,
                          time_budget_s=60.0 * float(self._minutes.value))
        pairs, pixel_size, image = self._pairs()
        resegment = (image, pixel_size) if self._resegment.value and image is not None else None
        self.history = []
        self._run_image = self._image.value if resegment is not None else None
        self._run_plane = None if self._use_folder.value else self._plane
        self._budget = (time.monotonic(), cfg.time_budget_s)
        return self._runner.start(_train_named, pairs, self._name.value, init=init, config=cfg,
                                  pixel_size=pixel_size, resegment=resegment,
                                  on_done=self._on_done, on_yield=self._on_progress,
                                  on_cancelled=partial(self._on_cancelled, self._name.value))

    def _on_progress(self, p: Progress) -> None:
        if p.info is not None and "epoch" in p.info:
            self.history.append(p.info)
        self._runner.show_progress(p)
        if self.history and p.unit == "steps":
            self._runner.status.value += f"  (last epoch: {_epoch_summary(self.history[-1])})"
        elif p.info is not None and "epoch" in p.info:
            self._runner.status.value = f"Training: epoch {p.done}/{p.total}  {_epoch_summary(p.info)}"
        started, budget = self._budget
        if budget and p.unit in ("steps", "epochs"):
            self._runner.status.value += f"  ({(time.monotonic() - started) / 60:.1f} of {budget / 60:g} min)"

    def _on_cancelled(self, name: str) -> None:
        """Keep the best epoch so far as a model of its own, ``<name>-cancelled`` (a next
        run saving to ``name`` would delete ``<name>.best``), and say so."""
        from ..model.registry import user_model_path
        from ..workflows.training import model_paths

        best = model_paths(user_model_path(name))[1]
        if not best.exists():
            return
        target, k = user_model_path(f"{name}-cancelled"), 1
        while target.exists():
            k += 1
            target = user_model_path(f"{name}-cancelled-{k}")
        best.rename(target)
        self._runner.status.value += (f"; the best epoch so far is saved as the model "
                                      f"{target.name[: -len('.safetensors')]!r} ({target})")
        self._init.reset_choices()

    def _on_done(self, done) -> None:
        result, cells = done
        self.saved = Path(result.path)
        text = f"saved model {self.saved.stem!r} ({self.saved})"
        stopped = result.history[-1].get("stopped") if result.history else None
        if stopped:
            text += f"; stopped after epoch {result.history[-1]['epoch']} ({stopped})"
        text += _kept_summary(result)
        if cells is not None:
            like = self._run_image  # the image layer the run started from, not the one chosen now
            plane = {"plane": self._run_plane} if self._run_plane else {}
            layer = show_layer(self._viewer, cells, f"cells ({self.saved.stem})", "labels", metadata={
                "stage": "cells", "model": self.saved.stem, "source": getattr(like, "name", None), **plane},
                like=like)
            text += f"; {int(cells.max())} cells in layer {layer.name!r}"
        self._runner.status.value = text
        self._init.reset_choices()


def _train_named(pairs, name: str, resegment=None, **kwargs):
    """The training workflow saving to the user model folder under ``name``, then (with
    ``resegment`` = (image, pixel size)) the whole image segmented with the new model;
    returns (TrainResult, cells or None). A bad or taken name is an error of the worker
    (shown as a notification)."""
    from ..model.registry import user_model_path
    from ..workflows.training import iter_train, model_paths

    ckpt = model_paths(user_model_path(name))[2]
    run_files = (ckpt, ckpt.with_name(ckpt.name + ".json"))
    theirs = any(f.exists() for f in run_files)  # another run's (a CLI run saving here): kept
    try:
        result = yield from iter_train(pairs, user_model_path(name), val_fraction=0.2, keep_best=True, **kwargs)
    finally:
        # The widget never resumes: its checkpoint (weights and optimiser state, several MB)
        # would only clutter the models folder. A cancelled run's best epoch stays (said).
        if not theirs:
            for f in run_files:
                f.unlink(missing_ok=True)
    if resegment is None:
        return result, None
    from ..pipeline import iter_predict

    image, pixel_size = resegment
    yield Progress(0, 1, "images", message="re-segmenting the image with the new model")
    prediction = yield from iter_predict(image, pixel_size, model=result.path)
    return result, prediction.segment()


def _kept_summary(result) -> str:
    """Which epoch the saved model is, against the starting model on the held-out part."""
    extra = result.info.extra
    if "kept_epoch" not in extra:
        return ""
    kept, start = extra["kept_epoch"], extra.get("start_val_mAP")
    origin = (extra.get("fine_tuned_from") or {}).get("name", "the starting model")
    start_text = f"; {origin}: {start:.3f}" if start is not None else ""
    if kept is None:
        best = max((r["val_mAP"] for r in result.history if "val_mAP" in r), default=float("nan"))
        return (f"; NO epoch beat {origin} on the held-out right 20 % of the annotated region "
                f"(best epoch val AP {best:.3f}{start_text}): {origin} did better there, keep using it "
                "unless the new model's cells look better to you (it is the last epoch)")
    score = next(r.get("val_mAP") for r in result.history if r["epoch"] == kept)
    return (f"; kept epoch {kept}, the best on the held-out right 20 % of the annotated region "
            f"(val AP {score:.3f}{start_text})")


def _epoch_summary(record: dict) -> str:
    parts = [f"loss {record['train_loss']:.3f}"]
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.3f}")
    if "val_mAP" in record:
        parts.append(f"val AP {record['val_mAP']:.3f}")
    return "  ".join(parts)
