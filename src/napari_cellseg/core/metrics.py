"""Comparison of a predicted label image with a reference (ground-truth) one.

Definitions follow Fong et al. (2024) and Al-Kofahi et al. (2018):

* objects match one-to-one by an optimal assignment on IoU; a match counts when
  IoU >= the threshold; **AP = TP / (TP + FP + FN)** (the dense-tissue paper's
  "average precision"); mAP over images is the mean of per-image AP;
* **ARI**: adjusted Rand index over pixels, every label (background too) a cluster;
* **Dice**: pixel Dice of the two foregrounds;
* **SM** (Al-Kofahi et al., k = 0.6): ``k * mean_i max_t Dice(r_i, t) +
  (1 - k) * 2 |P| / (N + M)`` where the first term is the mean, over the N reference
  cells, of the best Dice with any overlapping predicted cell (0 if none), and P is the
  set of one-to-one correspondences. We read P as the pairs (r, t) that are each
  other's best-Dice partner (mutual best match): a reference cell split in two, or two
  cells merged into one, contributes at most one pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from . import validate
from .labels import compact

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
SM_K = 0.6


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both label images validated (a binary mask, boolean or one id over several separate
    objects as a 0/1 or 0/255 mask saved as integers is, is refused with a hint: scored as
    one object it would give a meaningless AP) and of one shape."""
    gt = validate.label_image(gt, "ground truth", one_id_mask=True)
    pred = validate.label_image(pred, "prediction", one_id_mask=True)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    return gt, pred


def contingency(gt_c: np.ndarray, pred_c: np.ndarray, n_gt: int, n_pred: int) -> np.ndarray:
    """Pixel counts of every (gt, pred) pair, background included: (n_gt+1, n_pred+1).

    One ``bincount`` over all pixels: no loop over label pairs.
    """
    index = gt_c.ravel() * (n_pred + 1) + pred_c.ravel()
    return np.bincount(index, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every pair of objects: (n_gt, n_pred), ids in increasing order."""
    gt, pred = _check_pair(gt, pred)
    g, _, ga = compact(gt, dtype=np.int64)
    p, _, pa = compact(pred, dtype=np.int64)
    inter = contingency(g, p, len(ga), len(pa))[1:, 1:]
    return inter / (ga[:, None] + pa[None, :] - inter)


def _match(
    inter: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching among pairs with IoU >= threshold.

    Maximises the number of matches, then their total IoU. Above 0.5 each object has
    at most one candidate, so the assignment problem is only solved on the rare
    conflicting objects (IoU exactly 0.5, or thresholds below 0.5).
    """
    gi, pi = np.nonzero(inter)
    if len(gi) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, np.zeros(0)
    i = inter[gi, pi].astype(np.float64)
    iou = i / (gt_area[gi] + pred_area[pi] - i)
    ok = iou >= threshold - 1e-12
    gi, pi, iou = gi[ok], pi[ok], iou[ok]
    g_count = np.bincount(gi, minlength=len(gt_area))
    p_count = np.bincount(pi, minlength=len(pred_area))
    clash = (g_count[gi] > 1) | (p_count[pi] > 1)
    mg, mp, mi = [gi[~clash]], [pi[~clash]], [iou[~clash]]
    if clash.any():
        rows, r_inv = np.unique(gi[clash], return_inverse=True)
        cols, c_inv = np.unique(pi[clash], return_inverse=True)
        score = np.zeros((len(rows), len(cols)))
        score[r_inv, c_inv] = 1.0 + iou[clash]  # count first, IoU breaks ties
        r, c = linear_sum_assignment(score, maximize=True)
        good = score[r, c] > 0
        mg.append(rows[r[good]])
        mp.append(cols[c[good]])
        mi.append(score[r[good], c[good]] - 1.0)
    return np.concatenate(mg), np.concatenate(mp), np.concatenate(mi)


def adjusted_rand_index(contingency_table: np.ndarray) -> float:
    """ARI from a contingency table of pixel counts (Hubert & Arabie 1985)."""
    n = contingency_table.sum()
    if n < 2:
        return 1.0

    def comb2(x: np.ndarray) -> float:
        x = np.asarray(x, dtype=np.float64)
        return float(np.sum(x * (x - 1.0) / 2.0))

    sum_ij = comb2(contingency_table[contingency_table > 0])
    sum_a = comb2(contingency_table.sum(axis=1))
    sum_b = comb2(contingency_table.sum(axis=0))
    total = n * (n - 1.0) / 2.0
    expected = sum_a * sum_b / total
    max_index = (sum_a + sum_b) / 2.0
    if max_index == expected:  # both partitions trivial (one cluster each, or all singletons)
        return 1.0
    return float((sum_ij - expected) / (max_index - expected))


@dataclass
class Evaluation:
    """Scores of one prediction against one reference label image."""

    iou_threshold: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    ap_by_threshold: dict[float, float]
    ap_50_95: float
    ari: float
    dice: float
    sm: float
    n_split: int
    n_merged: int
    mean_matched_iou: float
    per_true: pd.DataFrame = field(repr=False)
    per_pred: pd.DataFrame = field(repr=False)

    @property
    def tp_ids(self) -> np.ndarray:
        """Predicted ids that are true positives."""
        return self.per_pred.loc[self.per_pred["matched"], "label"].to_numpy()

    @property
    def fp_ids(self) -> np.ndarray:
        """Predicted ids without a match."""
        return self.per_pred.loc[~self.per_pred["matched"], "label"].to_numpy()

    @property
    def fn_ids(self) -> np.ndarray:
        """Reference ids without a match."""
        return self.per_true.loc[~self.per_true["matched"], "label"].to_numpy()

    def summary(self) -> dict[str, float | int]:
        """The scalar scores (JSON-ready)."""
        d = asdict(self)
        d.pop("per_true")
        d.pop("per_pred")
        d["ap_by_threshold"] = {f"{k:.2f}": v for k, v in self.ap_by_threshold.items()}
        return d


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den else empty


def evaluate(
    gt: np.ndarray,
    pred: np.ndarray,
    iou: float = 0.5,
    min_size: int = 0,
    thresholds: tuple[float, ...] = IOU_THRESHOLDS,
) -> Evaluation:
    """Compare a predicted label image with a reference one.

    Parameters
    ----------
    gt, pred : (M, N) ndarray of int
        Label images, 0 = background; ids need not be consecutive.
    iou : float
        IoU at which a match counts (0 < iou <= 1).
    min_size : int
        Objects smaller than this many pixels are dropped from both sides first.
    thresholds : tuple of float
        IoU thresholds for ``ap_by_threshold`` and ``ap_50_95``.

    Returns
    -------
    Evaluation
        With an empty reference and an empty prediction every ratio is 1 (nothing to
        find, nothing wrongly found).
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    gt, pred = _check_pair(gt, pred)
    g, g_ids, g_area = compact(gt, min_size, dtype=np.int64)
    p, p_ids, p_area = compact(pred, min_size, dtype=np.int64)
    n_g, n_p = len(g_ids), len(p_ids)
    table = contingency(g, p, n_g, n_p)
    inter = table[1:, 1:]

    def scores(thr: float) -> tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]:
        mg, mp, mi = _match(inter, g_area, p_area, thr)
        tp = len(mg)
        return tp, n_p - tp, n_g - tp, mg, mp, mi

    tp, fp, fn, mg, mp, mi = scores(iou)
    ap_by = {}
    for thr in thresholds:
        t_tp, t_fp, t_fn, *_ = scores(thr)
        ap_by[float(thr)] = _ratio(t_tp, t_tp + t_fp + t_fn, 1.0)

    # Best IoU / Dice per object, from the intersection table.
    union = g_area[:, None] + p_area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou_m = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)
        dice_m = np.where(inter > 0, 2.0 * inter / (g_area[:, None] + p_area[None, :]), 0.0)
    best_dice_g = dice_m.max(axis=1) if n_p else np.zeros(n_g)
    best_iou_g = iou_m.max(axis=1) if n_p else np.zeros(n_g)
    best_iou_p = iou_m.max(axis=0) if n_g else np.zeros(n_p)

    # SM: mutual best-Dice pairs are the one-to-one correspondences P.
    if n_g and n_p:
        g_best = dice_m.argmax(axis=1)
        p_best = dice_m.argmax(axis=0)
        has = best_dice_g > 0
        mutual = int(np.sum(has & (p_best[g_best] == np.arange(n_g))))
    else:
        mutual = 0
    first = float(best_dice_g.mean()) if n_g else (1.0 if n_p == 0 else 0.0)
    second = _ratio(2.0 * mutual, n_g + n_p, 1.0)
    sm = SM_K * first + (1.0 - SM_K) * second

    # Splits and merges: an object "belongs" to the one on the other side that holds
    # more than half of its pixels.
    owner_of_p = np.full(n_p, -1)
    if n_p and n_g:
        top_g = inter.argmax(axis=0)
        frac = inter[top_g, np.arange(n_p)] / p_area
        owner_of_p = np.where(frac > 0.5, top_g, -1)
    pieces = np.bincount(owner_of_p[owner_of_p >= 0], minlength=n_g)
    owner_of_g = np.full(n_g, -1)
    if n_p and n_g:
        top_p = inter.argmax(axis=1)
        frac = inter[np.arange(n_g), top_p] / g_area
        owner_of_g = np.where(frac > 0.5, top_p, -1)
    merged = np.bincount(owner_of_g[owner_of_g >= 0], minlength=n_p)

    matched_pred_of_g = np.zeros(n_g, dtype=np.int64)
    matched_pred_of_g[mg] = p_ids[mp]
    matched_g_of_p = np.zeros(n_p, dtype=np.int64)
    matched_g_of_p[mp] = g_ids[mg]
    m_iou_g = np.zeros(n_g)
    m_iou_g[mg] = mi
    per_true = pd.DataFrame({
        "label": g_ids, "area": g_area, "matched": matched_pred_of_g > 0,
        "matched_label": matched_pred_of_g, "matched_iou": m_iou_g,
        "best_iou": best_iou_g, "best_dice": best_dice_g, "n_pieces": pieces,
    })
    per_pred = pd.DataFrame({
        "label": p_ids, "area": p_area, "matched": matched_g_of_p > 0,
        "matched_label": matched_g_of_p, "best_iou": best_iou_p, "n_cells_merged": merged,
    })
    fg_g = g_area.sum()
    fg_p = p_area.sum()
    dice = _ratio(2.0 * inter.sum(), fg_g + fg_p, 1.0)
    precision = _ratio(tp, tp + fp, 1.0 if n_g == 0 else 0.0)
    recall = _ratio(tp, tp + fn, 1.0 if n_p == 0 else 0.0)
    return Evaluation(
        iou_threshold=float(iou), n_true=n_g, n_pred=n_p, tp=tp, fp=fp, fn=fn,
        precision=precision, recall=recall,
        f1=_ratio(2.0 * tp, 2.0 * tp + fp + fn, 1.0),
        ap=_ratio(tp, tp + fp + fn, 1.0),
        ap_by_threshold=ap_by, ap_50_95=float(np.mean(list(ap_by.values()))),
        ari=adjusted_rand_index(table), dice=dice, sm=float(sm),
        n_split=int(np.sum(pieces >= 2)), n_merged=int(np.sum(merged >= 2)),
        mean_matched_iou=float(mi.mean()) if len(mi) else float("nan"),
        per_true=per_true, per_pred=per_pred,
    )


def mean_scores(results: list[Evaluation]) -> dict[str, float]:
    """Means over images: ``mAP`` is the mean of per-image AP at the chosen IoU."""
    if not results:
        raise ValueError("no evaluation results to average")
    keys = ("ap", "ap_50_95", "precision", "recall", "f1", "ari", "dice", "sm")
    out = {k: float(np.mean([getattr(r, k) for r in results])) for k in keys}
    out["mAP"] = out.pop("ap")
    out["tp"] = int(sum(r.tp for r in results))
    out["fp"] = int(sum(r.fp for r in results))
    out["fn"] = int(sum(r.fn for r in results))
    return out
