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

    One ``bincount`` over all pixels: no loop over label pairs. Dense: for a few thousand
    objects a side; :func:`evaluate` uses :func:`overlap_pairs`.
    """
    index = gt_c.ravel() * (n_pred + 1) + pred_c.ravel()
    return np.bincount(index, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)


# Up to this many (gt, pred) cells the table is counted densely (one bincount), beyond it
# only the pairs that occur are (a sort): a slide with 10^5 cells a side would otherwise
# need a 10^10-entry table.
DENSE_TABLE_MAX = 2**24


def overlap_pairs(gt_c: np.ndarray, pred_c: np.ndarray, n_gt: int, n_pred: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero entries of :func:`contingency` as (gt index, pred index, pixels), row
    by row: memory grows with the pairs that touch, not with n_gt x n_pred."""
    width = n_pred + 1
    index = gt_c.ravel() * width + pred_c.ravel()
    if (n_gt + 1) * width <= DENSE_TABLE_MAX:
        counts = np.bincount(index, minlength=(n_gt + 1) * width)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(index, return_counts=True)
    rows, cols = np.divmod(keys, width)
    return rows, cols, counts.astype(np.int64)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every pair of objects: (n_gt, n_pred), ids in increasing order."""
    gt, pred = _check_pair(gt, pred)
    g, _, ga = compact(gt, dtype=np.int64)
    p, _, pa = compact(pred, dtype=np.int64)
    inter = contingency(g, p, len(ga), len(pa))[1:, 1:]
    return inter / (ga[:, None] + pa[None, :] - inter)


def _match(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray], gt_area: np.ndarray, pred_area: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching among pairs with IoU >= threshold; ``pairs`` are the
    overlapping objects (gt index, pred index, pixels in common), 0-based.

    Maximises the number of matches, then their total IoU. Above 0.5 each object has
    at most one candidate, so the assignment problem is only solved on the rare
    conflicting objects (IoU exactly 0.5, or thresholds below 0.5).
    """
    gi, pi, i = pairs
    if len(gi) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, np.zeros(0)
    i = i.astype(np.float64)
    iou = i / (gt_area[gi] + pred_area[pi] - i)
    ok = iou >= threshold - 1e-12
    gi, pi, iou = gi[ok], pi[ok], iou[ok]
    g_count = np.bincount(gi, minlength=len(gt_area))
    p_count = np.bincount(pi, minlength=len(pred_area))
    clash = (g_count[gi] > 1) | (p_count[pi] > 1)
    mg, mp, mi = [gi[~clash]], [pi[~clash]], [iou[~clash]]
    if clash.any():
        # One assignment per connected group of clashing objects, not one over all of
        # them: 10^4 clashes (a slide, or IoU exactly 0.5 everywhere) would otherwise be a
        # dense 10^4 x 10^4 problem.
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        cg, cp, ci = gi[clash], pi[clash], iou[clash]
        rows, r_inv = np.unique(cg, return_inverse=True)
        cols, c_inv = np.unique(cp, return_inverse=True)
        n_r = len(rows)
        graph = coo_matrix((np.ones(len(cg)), (r_inv, n_r + c_inv)), shape=(n_r + len(cols),) * 2)
        _, group = connected_components(graph, directed=False)
        pair_group = group[r_inv]
        order = np.argsort(pair_group, kind="stable")
        bounds = np.flatnonzero(np.diff(pair_group[order])) + 1
        for part in np.split(order, bounds):
            rr, r_loc = np.unique(cg[part], return_inverse=True)
            cc, c_loc = np.unique(cp[part], return_inverse=True)
            score = np.zeros((len(rr), len(cc)))
            score[r_loc, c_loc] = 1.0 + ci[part]  # count first, IoU breaks ties
            r, c = linear_sum_assignment(score, maximize=True)
            good = score[r, c] > 0
            mg.append(rr[r[good]])
            mp.append(cc[c[good]])
            mi.append(score[r[good], c[good]] - 1.0)
    return np.concatenate(mg), np.concatenate(mp), np.concatenate(mi)


def adjusted_rand_index(contingency_table: np.ndarray) -> float:
    """ARI from a contingency table of pixel counts (Hubert & Arabie 1985)."""
    table = np.asarray(contingency_table)
    return _ari(table[table > 0], table.sum(axis=1), table.sum(axis=0))


def _ari(pair_counts: np.ndarray, row_sums: np.ndarray, col_sums: np.ndarray) -> float:
    """ARI from the nonzero cells of a contingency table and its margins."""
    n = float(np.sum(row_sums))
    if n < 2:
        return 1.0

    def comb2(x: np.ndarray) -> float:
        x = np.asarray(x, dtype=np.float64)
        return float(np.sum(x * (x - 1.0) / 2.0))

    sum_ij = comb2(pair_counts)
    sum_a = comb2(row_sums)
    sum_b = comb2(col_sums)
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
    if not min_size >= 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    gt, pred = _check_pair(gt, pred)
    g, g_ids, g_area = compact(gt, min_size, dtype=np.int64)
    p, p_ids, p_area = compact(pred, min_size, dtype=np.int64)
    n_g, n_p = len(g_ids), len(p_ids)
    rows, cols, counts = overlap_pairs(g, p, n_g, n_p)
    ari = _ari(counts, np.bincount(g.ravel(), minlength=n_g + 1), np.bincount(p.ravel(), minlength=n_p + 1))
    both = (rows > 0) & (cols > 0)  # object on both sides: the intersections, 0-based ids
    r, c, v = rows[both] - 1, cols[both] - 1, counts[both].astype(np.float64)
    pairs = (r, c, counts[both])

    def scores(thr: float) -> tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]:
        mg, mp, mi = _match(pairs, g_area, p_area, thr)
        tp = len(mg)
        return tp, n_p - tp, n_g - tp, mg, mp, mi

    tp, fp, fn, mg, mp, mi = scores(iou)
    ap_by = {}
    for thr in thresholds:
        t_tp, t_fp, t_fn, *_ = scores(thr)
        ap_by[float(thr)] = _ratio(t_tp, t_tp + t_fp + t_fn, 1.0)

    # Best IoU / Dice per object, over the pairs that overlap (0 where none does).
    sizes = g_area[r] + p_area[c]
    iou_v, dice_v = v / (sizes - v), 2.0 * v / sizes
    best_iou_g, best_dice_g, best_iou_p = np.zeros(n_g), np.zeros(n_g), np.zeros(n_p)
    np.maximum.at(best_iou_g, r, iou_v)
    np.maximum.at(best_dice_g, r, dice_v)
    np.maximum.at(best_iou_p, c, iou_v)

    # SM: mutual best-Dice pairs are the one-to-one correspondences P. Each object's best
    # partner is its highest-Dice pair, the lowest index among equals (numpy's argmax).
    def best_partner(own: np.ndarray, other: np.ndarray, n: int) -> np.ndarray:
        order = np.lexsort((other, -dice_v, own))
        first = np.ones(len(order), bool)
        first[1:] = own[order][1:] != own[order][:-1]
        partner = np.full(n, -1)
        partner[own[order][first]] = other[order][first]
        return partner

    g_best, p_best = best_partner(r, c, n_g), best_partner(c, r, n_p)
    has = g_best >= 0
    mutual = int(np.sum(p_best[g_best[has]] == np.flatnonzero(has)))
    first = float(best_dice_g.mean()) if n_g else (1.0 if n_p == 0 else 0.0)
    second = _ratio(2.0 * mutual, n_g + n_p, 1.0)
    sm = SM_K * first + (1.0 - SM_K) * second

    # Splits and merges: an object "belongs" to the one on the other side that holds
    # more than half of its pixels.
    # (At most one object can hold more than half of another.)
    owner_of_p = np.full(n_p, -1)
    most = v > 0.5 * p_area[c]
    owner_of_p[c[most]] = r[most]
    pieces = np.bincount(owner_of_p[owner_of_p >= 0], minlength=n_g)
    owner_of_g = np.full(n_g, -1)
    most = v > 0.5 * g_area[r]
    owner_of_g[r[most]] = c[most]
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
    dice = _ratio(2.0 * v.sum(), fg_g + fg_p, 1.0)
    precision = _ratio(tp, tp + fp, 1.0 if n_g == 0 else 0.0)
    recall = _ratio(tp, tp + fn, 1.0 if n_p == 0 else 0.0)
    return Evaluation(
        iou_threshold=float(iou), n_true=n_g, n_pred=n_p, tp=tp, fp=fp, fn=fn,
        precision=precision, recall=recall,
        f1=_ratio(2.0 * tp, 2.0 * tp + fp + fn, 1.0),
        ap=_ratio(tp, tp + fp + fn, 1.0),
        ap_by_threshold=ap_by, ap_50_95=float(np.mean(list(ap_by.values()))),
        ari=ari, dice=dice, sm=float(sm),
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
