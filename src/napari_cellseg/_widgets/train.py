"""Train / fine-tune in the viewer: the current image and a corrected labels layer (or
a folder of image / mask pairs), live loss and validation figures, a named model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    LineEdit,
    SpinBox,
    create_widget,
)

from ._inputs import model_choices
from ._layers import image_plane, pixel_size_of
from ._runner import Runner

if TYPE_CHECKING:
    import napari

    from ..progress import Progress

FROM_SCRATCH = "(from scratch)"


class TrainWidget(Container):
    """Fine-tune a model on corrected labels; the result joins the model lists."""

    def __init__(self, viewer: napari.viewer.Viewer):
        from ..model.registry import DEFAULT_MODEL

        super().__init__()
        self._viewer = viewer
        self._image = create_widget(label="Image", annotation="napari.layers.Image")
        self._labels = create_widget(label="Corrected labels", annotation="napari.layers.Labels")
        self._use_folder = CheckBox(value=False, text="Train on a folder of pairs instead")
        self._folder = FileEdit(mode="d", label="Pairs folder", nullable=True,
                                tooltip="x.tif with x_masks.tif ...")
        self._init = ComboBox(choices=lambda *_: [*model_choices(), FROM_SCRATCH], label="Start from")
        if DEFAULT_MODEL in self._init.choices:  # the README's promise: it fine-tunes
            self._init.value = DEFAULT_MODEL
        self._epochs = SpinBox(value=10, min=1, max=1000, label="Epochs")
        self._steps = SpinBox(value=20, min=1, max=10000, label="Steps per epoch")
        self._name = LineEdit(value="my_model", label="Save as")
        self._runner = Runner("Train", "Training")
        self.extend([self._image, self._labels, self._use_folder, self._folder, self._init,
                     self._epochs, self._steps, self._name, *self._runner.widgets])
        self._runner.on_run(self.run)
        self.saved: Path | None = None
        self.history: list[dict] = []

    def _pairs(self) -> tuple[list, float | None]:
        """(name, image, labels) pairs and their pixel size (None: unknown)."""
        if self._use_folder.value:
            from ..io import load_pairs

            if self._folder.value is None:
                raise ValueError("choose the folder of image / mask pairs")
            folder = Path(self._folder.value)
            return load_pairs(folder, folder), None
        layer = self._image.value
        image = image_plane(layer, self._viewer)
        labels = self._labels.value
        if labels is None:
            raise ValueError("choose the corrected labels layer")
        if labels.data.shape != image.shape:
            raise ValueError(f"labels {labels.data.shape} and image {image.shape} differ in shape")
        return [(layer.name, image, labels.data)], pixel_size_of(layer)

    def run(self, *_):
        """Train in a worker: per-step progress, Cancel within a step."""
        from ..model.train import TrainConfig

        init = None if self._init.value == FROM_SCRATCH else self._init.value
        cfg = TrainConfig(epochs=int(self._epochs.value), steps_per_epoch=int(self._steps.value),
                          batch=8, lr=3e-4 if init else 1e-3)
        pairs, pixel_size = self._pairs()
        self.history = []
        return self._runner.start(_train_named, pairs, self._name.value, init=init, config=cfg,
                                  pixel_size=pixel_size, on_done=self._on_done, on_yield=self._on_progress)

    def _on_progress(self, p: Progress) -> None:
        if p.info is not None and "epoch" in p.info:
            self.history.append(p.info)
        self._runner.show_progress(p)
        if self.history and p.unit == "steps":
            self._runner.status.value += f"  (last epoch: {_epoch_summary(self.history[-1])})"
        elif p.info is not None and "epoch" in p.info:
            self._runner.status.value = f"Training: epoch {p.done}/{p.total}  {_epoch_summary(p.info)}"

    def _on_done(self, result) -> None:
        self.saved = Path(result.path)
        self._runner.status.value = f"saved model {self.saved.stem!r} ({self.saved})"
        self._init.reset_choices()


def _train_named(pairs, name: str, **kwargs):
    """The training workflow saving to the user model folder under ``name``; a bad or
    taken name is an error of the worker (shown as a notification)."""
    from ..model.registry import user_model_path
    from ..workflows.training import iter_train

    return (yield from iter_train(pairs, user_model_path(name), val_fraction=0.2, **kwargs))


def _epoch_summary(record: dict) -> str:
    parts = [f"loss {record['train_loss']:.3f}"]
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.3f}")
    if "val_mAP" in record:
        parts.append(f"val AP {record['val_mAP']:.3f}")
    return "  ".join(parts)
