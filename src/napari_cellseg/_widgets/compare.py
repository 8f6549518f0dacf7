"""Compare a prediction with ground truth: scores, and TP / FP / FN layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    Container,
    FloatSpinBox,
    PushButton,
    SpinBox,
    Table,
    create_widget,
)

from ..core.metrics import Evaluation, evaluate
from ._inputs import COMPARE_LAYERS, LayerDefaults, looks_like_truth, result_layers
from ._layers import layer_array, placement, plane_of, show_layer, view_plane
from ._runner import reports_errors, status_label

if TYPE_CHECKING:
    import napari

# The dense-tissue paper's colours: true positives yellow, false positives green,
# ground truth (here: the missed cells) red. Drawn as thick solid outlines on top, with
# the two scored layers dimmed, so that they stand out from the cells' own colours.
CONTOUR_PX = 3
DIMMED_OPACITY = 0.3
COLOURS = {"TP": (1.0, 1.0, 0.0, 1.0), "FP": (0.0, 1.0, 0.0, 1.0), "FN": (1.0, 0.0, 0.0, 1.0)}
LAYER_NAMES = COMPARE_LAYERS


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
        self._summary = status_label()
        self._table = Table(value={"what": [], "label": [], "y": [], "x": [], "best IoU": []})
        self._table.read_only = True
        self._readable_table()
        self._centres: list[tuple[float, float]] = []  # the table rows' exact centres
        self.extend([self._gt, self._pred, self._iou, self._min_size, self._run_button,
                     self._summary, self._table])
        self._run_button.changed.connect(reports_errors(self.run, "Compare", self._summary))
        self._table.native.itemSelectionChanged.connect(self._centre_on_selection)
        self.result: Evaluation | None = None
        self._defaults = LayerDefaults({"gt": self._gt, "pred": self._pred}, self._pick_defaults)
        self._defaults.run(lambda: None)

    def reset_choices(self, *args) -> None:
        """The layer lists follow the viewer; untouched choices follow the defaults."""
        self._defaults.run(lambda: super(CompareWidget, self).reset_choices(*args))

    def _pick_defaults(self, user_chose: set[str]) -> None:
        """Ground truth: a layer named like it; prediction: the cells layer, or another
        result layer, never the ground-truth choice while another layer exists."""
        layers = list(self._gt.choices)
        if "gt" not in user_chose:
            truth = [layer for layer in layers if looks_like_truth(layer)]
            if truth:
                self._gt.value = truth[0]
        gt = self._gt.value
        if "pred" not in user_chose or self._pred.value is gt:
            candidates = [layer for layer in result_layers(layers) if layer is not gt]
            if candidates:
                self._pred.value = candidates[0]

    def run(self, *_) -> Evaluation:
        """Evaluate, show the scores, the per-object table and the TP / FP / FN layers."""
        gt_layer, pred_layer = self._gt.value, self._pred.value
        if gt_layer is None or pred_layer is None:
            raise ValueError("choose a ground-truth and a prediction labels layer")
        if gt_layer is pred_layer:
            raise ValueError(f"ground truth and prediction are the same layer {gt_layer.name!r}: "
                             "it would score 1.000 against itself; choose the layer to score "
                             "as the prediction")
        gt, pred = layer_array(gt_layer), layer_array(pred_layer)
        # A stack is scored one plane at a time: the one a 2-D result was cut from (its
        # "plane"), else the one in view.
        recorded = next((layer.metadata.get("plane") for layer, data in ((pred_layer, pred), (gt_layer, gt))
                         if data.ndim == 2 and layer.metadata.get("plane")), None)
        plane = None
        if gt.ndim > 2 or pred.ndim > 2:
            plane = recorded or view_plane(pred_layer if pred.ndim > 2 else gt_layer, self._viewer)
            gt, pred = (_plane_of(data, layer, plane) for data, layer in ((gt, gt_layer), (pred, pred_layer)))
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt_layer.name!r} has shape {gt.shape}, prediction "
                             f"{pred_layer.name!r} has shape {pred.shape}")
        r = evaluate(gt, pred, iou=float(self._iou.value), min_size=int(self._min_size.value))
        self.result = r
        # Same shape, so compared pixel for pixel; layers placed differently (a mask opened
        # without the image's scale) would draw the overlays apart: all go on the prediction.
        placed = [(tuple(np.round(layer.scale[-2:], 9)), tuple(np.round(layer.translate[-2:], 9)))
                  for layer in (gt_layer, pred_layer)]
        apart = placed[0] != placed[1]
        self._summary.value = (
            (f"plane {', '.join(map(str, plane))}: " if plane else "") +
            f"AP {r.ap:.3f}  (TP {r.tp}, FP {r.fp}, FN {r.fn})\n"
            f"precision {r.precision:.3f}  recall {r.recall:.3f}\n"
            f"ARI {r.ari:.3f}  SM {r.sm:.3f}  Dice {r.dice:.3f}  AP50:95 {r.ap_50_95:.3f}" +
            (f"\nthe two layers are placed differently (scale, offset {placed[0]} and {placed[1]}): "
             "compared pixel for pixel, drawn on the prediction" if apart else ""))
        parts = {
            "TP": np.where(np.isin(pred, r.tp_ids), pred, 0),
            "FP": np.where(np.isin(pred, r.fp_ids), pred, 0),
            "FN": np.where(np.isin(gt, r.fn_ids), gt, 0),
        }
        meta = {"stage": "compare", "ground_truth": gt_layer.name, "prediction": pred_layer.name,
                "iou": r.iou_threshold, "ap": r.ap, **({"plane": plane} if plane else {})}
        for layer in {gt_layer.name: gt_layer, pred_layer.name: pred_layer}.values():
            layer.opacity = min(layer.opacity, DIMMED_OPACITY)
        for key, data in parts.items():
            layer = show_layer(self._viewer, data, LAYER_NAMES[key], "labels", metadata=meta,
                               like=gt_layer if key == "FN" and not apart else pred_layer)
            layer.colormap = _one_colour(COLOURS[key])
            layer.contour = CONTOUR_PX
            layer.opacity = 1.0
            layer.visible = True
            layers = self._viewer.layers
            layers.move(layers.index(layer), len(layers))  # on top of the cells
        self._fill_table(gt, pred, r, pred_layer if apart else gt_layer, pred_layer)
        return r

    def _fill_table(self, gt: np.ndarray, pred: np.ndarray, r: Evaluation, gt_layer=None, pred_layer=None) -> None:
        from scipy import ndimage as ndi

        rows, self._centres = [], []
        for what, labels, ids, frame, layer in (("FP", pred, r.fp_ids, r.per_pred, pred_layer),
                                                ("FN", gt, r.fn_ids, r.per_true, gt_layer)):
            # The camera centres on world coordinates: the layer's scale and translation.
            place = placement(layer, 2)
            scale, shift = place.get("scale", (1.0, 1.0)), place.get("translate", (0.0, 0.0))
            if len(ids) == 0:
                continue
            centres = ndi.center_of_mass(np.ones(labels.shape), labels, ids)
            best = frame.set_index("label").loc[ids, "best_iou"].to_numpy()
            for i, (cy, cx), b in zip(ids, centres, best, strict=True):
                # Whole pixels for the position, two decimals for the IoU: what a reader needs.
                rows.append((what, int(i), round(float(cy)), round(float(cx)), round(float(b), 2)))
                self._centres.append((float(shift[0] + scale[0] * cy), float(shift[1] + scale[1] * cx)))
        self._table.value = {  # pandas "split" layout
            "data": [list(row) for row in rows], "index": list(range(len(rows))),
            "columns": ["what", "label", "y", "x", "best IoU"],
        }
        self._fit_columns()

    def _readable_table(self) -> None:
        """Numbers as they are (magicgui's delegate pads every float to 4 decimals) and
        columns sized to their contents."""
        from qtpy.QtWidgets import QHeaderView, QStyledItemDelegate

        table = self._table.native
        table.setItemDelegate(QStyledItemDelegate(table))
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.verticalHeader().setVisible(False)
        self._fit_columns()

    def _fit_columns(self) -> None:
        """A table at least as wide as its columns, so that none hides behind a scroll bar."""
        table = self._table.native
        table.resizeColumnsToContents()
        header = table.horizontalHeader()
        width = sum(header.sectionSize(i) for i in range(header.count()))
        scroll = table.verticalScrollBar().sizeHint().width()
        table.setMinimumWidth(width + scroll + 2 * table.frameWidth())

    def _centre_on_selection(self) -> None:
        """Centre the view on the object of the selected row."""
        rows = {i.row() for i in self._table.native.selectedIndexes()}
        if not rows:
            return
        y, x = self._centres[min(rows)]
        scene = getattr(self._viewer, "scene", None)  # napari >= 0.9 moved the camera there
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self._viewer.camera
        camera.center = (y, x)
        camera.zoom = max(camera.zoom, 4.0)


def _plane_of(data: np.ndarray, layer, plane: list[int] | None) -> np.ndarray:
    """``data`` itself when 2-D, else its ``plane`` (said in words when it has no such plane)."""
    if data.ndim == 2 or plane is None:
        return data
    index = plane_of(data.shape[:-2], plane)
    if index is None:
        raise ValueError(f"{layer.name!r} has planes {list(data.shape[:-2])}: it has no plane {list(plane)} to score")
    return data[index]
