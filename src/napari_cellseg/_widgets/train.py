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

from ._layers import image_plane
from ._runner import Runner
from .segment_cells import model_choices

if TYPE_CHECKING:
    import napari


class TrainWidget(Container):
    """Fine-tune a model on corrected labels; the result joins the model lists."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._image = create_widget(label="Image", annotation="napari.layers.Image")
        self._labels = create_widget(label="Corrected labels", annotation="napari.layers.Labels")
        self._use_folder = CheckBox(value=False, text="Train on a folder of pairs instead")
        self._folder = FileEdit(mode="d", label="Pairs folder", tooltip="x.tif with x_masks.tif ...")
        self._init = ComboBox(choices=lambda *_: ["(from scratch)", *model_choices()], label="Start from")
        self._epochs = SpinBox(value=10, min=1, max=1000, label="Epochs")
        self._steps = SpinBox(value=20, min=1, max=10000, label="Steps per epoch")
        self._name = LineEdit(value="my_model", label="Save as")
        self._runner = Runner("Train", "Training")
        self.extend([self._image, self._labels, self._use_folder, self._folder, self._init,
                     self._epochs, self._steps, self._name, *self._runner.widgets])
        self._runner.run_button.changed.connect(self.run)
        self.saved: Path | None = None
        self.history: list[dict] = []

    def _pairs(self):
        if self._use_folder.value:
            from ..model.train import load_pairs

            folder = Path(self._folder.value)
            return [(img, lab) for _, img, lab in load_pairs(folder, folder)]
        image = image_plane(self._image.value, self._viewer)
        labels = self._labels.value
        if labels is None:
            raise ValueError("choose the corrected labels layer")
        if labels.data.shape != image.shape:
            raise ValueError(f"labels {labels.data.shape} and image {image.shape} differ in shape")
        return [(image, labels.data)]

    def run(self, *_):
        from ..model.train import TrainConfig, iter_finetune

        init = None if self._init.value == "(from scratch)" else self._init.value
        cfg = TrainConfig(epochs=int(self._epochs.value), steps_per_epoch=int(self._steps.value),
                          batch=8, lr=3e-4 if init else 1e-3)
        self.history = []
        return self._runner.start(iter_finetune, self._pairs(), self._name.value.strip(), init, cfg,
                                  on_done=self._on_done, on_yield=self._on_progress_record)

    def _on_progress_record(self, record) -> None:
        self.history.append(record)
        parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.3f}"]
        if "val_loss" in record:
            parts.append(f"val loss {record['val_loss']:.3f}")
        if "val_mAP" in record:
            parts.append(f"val AP {record['val_mAP']:.3f}")
        self._runner.status.value = "  ".join(parts)
        self._runner.progress.max = int(self._epochs.value)
        self._runner.progress.value = int(record["epoch"])

    def _on_done(self, path) -> None:
        self.saved = Path(path)
        self._runner.status.value = f"saved model {self.saved.stem!r} ({self.saved})"
        self._init.reset_choices()
