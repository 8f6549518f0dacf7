"""Compare a prediction with ground truth: scores, and TP / FP / FN layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
    Table,
    create_widget,
)

from ..core.metrics import Evaluation, evaluate
from ._layers import show_layer

if TYPE_CHECKING:
    import napari

# The dense-tissue paper's colours: true positives yellow, false positives green,
# ground truth (here: the missed cells) red.
COLOURS = {"TP": (1.0, 1.0, 0.0, 1.0), "FP": (0.0, 1.0, 0.0, 1.0), "FN": (1.0, 0.0, 0.0, 1.0)}
LAYER_NAMES = {"TP": "true positives", "FP": "false positives", "FN": "false negatives (missed)"}


def _one_colour(rgba):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: rgba, 0: (0.0, 0.0, 0.0, 0.0)})


class CompareWidget(Container):
    """Score a labels layer against a ground-truth labels layer (AP at an IoU, ARI, SM)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._gt = create_widget(label="Ground truth", annotation="napari.layers.Labels")
        self._pred = create_widget(label="Prediction", annotation="napari.layers.Labels")
        self._iou = FloatSpinBox(value=0.5, min=0.05, max=1.0, step=0.05, label="IoU threshold")
        self._min_size = SpinBox(value=0, min=0, max=100000, label="Min size (px)")
        self._run_button = PushButton(text="Compare")
        self._summary = Label(value="")
        self._table = Table(value={"what": [], "label": [], "y": [], "x": [], "best IoU": []})
        self._table.read_only = True
        self.extend([self._gt, self._pred, self._iou, self._min_size, self._run_button,
                     self._summary, self._table])
        self._run_button.changed.connect(self.run)
        self._table.native.itemSelectionChanged.connect(self._centre_on_selection)
        self.result: Evaluation | None = None

    def run(self, *_) -> Evaluation:
        """Evaluate, show the scores, the per-object table and the TP / FP / FN layers."""
        gt_layer, pred_layer = self._gt.value, self._pred.value
        if gt_layer is None or pred_layer is None:
            raise ValueError("choose a ground-truth and a prediction labels layer")
        gt = np.asarray(gt_layer.data)
        pred = np.asarray(pred_layer.data)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt_layer.name!r} has shape {gt.shape}, prediction "
                             f"{pred_layer.name!r} has shape {pred.shape}")
        r = evaluate(gt, pred, iou=float(self._iou.value), min_size=int(self._min_size.value))
        self.result = r
        self._summary.value = (
            f"AP {r.ap:.3f}  (TP {r.tp}, FP {r.fp}, FN {r.fn})\n"
            f"precision {r.precision:.3f}  recall {r.recall:.3f}\n"
            f"ARI {r.ari:.3f}  SM {r.sm:.3f}  Dice {r.dice:.3f}  AP50:95 {r.ap_50_95:.3f}")
        parts = {
            "TP": np.where(np.isin(pred, r.tp_ids), pred, 0),
            "FP": np.where(np.isin(pred, r.fp_ids), pred, 0),
            "FN": np.where(np.isin(gt, r.fn_ids), gt, 0),
        }
        meta = {"stage": "compare", "ground_truth": gt_layer.name, "prediction": pred_layer.name,
                "iou": r.iou_threshold, "ap": r.ap}
        for key, data in parts.items():
            layer = show_layer(self._viewer, data, LAYER_NAMES[key], "labels", metadata=meta)
            layer.colormap = _one_colour(COLOURS[key])
            layer.contour = 2
        self._fill_table(gt, pred, r)
        return r

    def _fill_table(self, gt: np.ndarray, pred: np.ndarray, r: Evaluation) -> None:
        from scipy import ndimage as ndi

        rows = []
        for what, labels, ids, frame in (("FP", pred, r.fp_ids, r.per_pred), ("FN", gt, r.fn_ids, r.per_true)):
            if len(ids) == 0:
                continue
            centres = ndi.center_of_mass(np.ones(labels.shape), labels, ids)
            best = frame.set_index("label").loc[ids, "best_iou"].to_numpy()
            for i, (cy, cx), b in zip(ids, centres, best, strict=True):
                rows.append((what, int(i), round(float(cy), 1), round(float(cx), 1), round(float(b), 3)))
        self._table.value = {  # pandas "split" layout
            "data": [list(row) for row in rows], "index": list(range(len(rows))),
            "columns": ["what", "label", "y", "x", "best IoU"],
        }

    def _centre_on_selection(self) -> None:
        """Centre the view on the object of the selected row."""
        rows = {i.row() for i in self._table.native.selectedIndexes()}
        if not rows:
            return
        data = self._table.data.to_list()
        row = data[min(rows)]
        y, x = float(row[2]), float(row[3])
        scene = getattr(self._viewer, "scene", None)  # napari >= 0.9 moved the camera there
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self._viewer.camera
        camera.center = (y, x)
        camera.zoom = max(camera.zoom, 4.0)
