"""Metrics on cases worked out by hand, and properties."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_cellseg.core.metrics import (
    adjusted_rand_index,
    contingency,
    evaluate,
    iou_matrix,
    mean_scores,
)


def squares(shape=(20, 30), boxes=()):
    out = np.zeros(shape, np.int32)
    for label, (r0, r1, c0, c1) in boxes:
        out[r0:r1, c0:c1] = label
    return out


GT2 = squares(boxes=[(1, (2, 6, 2, 6)), (2, (10, 14, 10, 14))])


def test_perfect_match():
    r = evaluate(GT2, GT2)
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert r.ap == r.precision == r.recall == r.f1 == r.ari == r.dice == r.sm == 1.0
    assert r.ap_50_95 == 1.0


def test_one_missed_cell():
    r = evaluate(GT2, np.where(GT2 == 1, 1, 0))
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.ap == pytest.approx(0.5)
    assert r.precision == 1.0 and r.recall == 0.5
    assert list(r.fn_ids) == [2]


def test_one_split():
    gt = squares(boxes=[(1, (2, 6, 2, 6))])  # 16 px
    pred = squares(boxes=[(1, (2, 6, 2, 5)), (2, (2, 6, 5, 6))])  # 12 px (IoU .75) + 4 px (.25)
    r = evaluate(gt, pred)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.ap == pytest.approx(0.5)
    assert r.n_split == 1 and r.n_merged == 0
    assert r.per_true["n_pieces"].tolist() == [2]


def test_one_merge():
    gt = squares(boxes=[(1, (2, 6, 2, 8)), (2, (2, 6, 8, 10))])  # 24 px + 8 px
    pred = squares(boxes=[(5, (2, 6, 2, 10))])  # 32 px: IoU .75 with 1, .25 with 2
    r = evaluate(gt, pred)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.ap == pytest.approx(0.5)
    assert r.n_merged == 1 and r.n_split == 0
    assert r.per_pred["matched_label"].tolist() == [1]


@pytest.mark.parametrize(("shift", "iou", "tp"), [(3, 70 / 130, 1), (4, 60 / 140, 0)])
def test_shifted_mask_around_half(shift, iou, tp):
    gt = squares(boxes=[(1, (5, 15, 5, 15))])
    pred = squares(boxes=[(1, (5, 15, 5 + shift, 15 + shift))])
    assert iou_matrix(gt, pred)[0, 0] == pytest.approx(iou)
    r = evaluate(gt, pred)
    assert r.tp == tp and r.ap == pytest.approx(tp)


def test_iou_threshold_exactly_half_counts():
    gt = squares(boxes=[(1, (0, 4, 0, 4))])
    pred = squares(boxes=[(1, (0, 4, 0, 2))])  # IoU 8 / 16 = 0.5
    assert evaluate(gt, pred, iou=0.5).tp == 1
    assert evaluate(gt, pred, iou=0.51).tp == 0


def test_empty_prediction_and_empty_truth():
    empty = np.zeros_like(GT2)
    r = evaluate(GT2, empty)
    assert (r.tp, r.fp, r.fn, r.ap) == (0, 0, 2, 0.0)
    assert r.sm == 0.0
    r = evaluate(empty, GT2)
    assert (r.tp, r.fp, r.fn, r.ap) == (0, 2, 0, 0.0)
    r = evaluate(empty, empty)
    assert r.ap == 1.0 and r.ari == 1.0


def test_non_consecutive_ids():
    gt = np.where(GT2 == 1, 7, np.where(GT2 == 2, 1000, 0))
    pred = np.where(GT2 == 1, 3, np.where(GT2 == 2, 70000, 0))
    r = evaluate(gt, pred)
    assert r.ap == 1.0
    assert r.per_true.set_index("label")["matched_label"].to_dict() == {7: 3, 1000: 70000}


def test_sm_by_hand():
    # A and B are 4x4 (16 px). P1 = A (Dice 1); P2 = half of B (Dice 2*8/24 = 2/3);
    # P3 overlaps nothing. Mutual best pairs: (A, P1), (B, P2) -> |P| = 2; N = 2, M = 3.
    pred = squares(boxes=[(1, (2, 6, 2, 6)), (2, (10, 14, 10, 12)), (3, (16, 19, 20, 24))])
    r = evaluate(GT2, pred)
    first = (1.0 + 2 / 3) / 2
    assert r.sm == pytest.approx(0.6 * first + 0.4 * (2 * 2 / (2 + 3)))


def test_ari_by_hand():
    # gt  = 1 1 2 2 0 0 ; pred = 1 1 2 0 0 0  -> ARI = (2 - 0.8) / (3.5 - 0.8) = 4/9
    gt = np.array([[1, 1, 2, 2, 0, 0]])
    pred = np.array([[1, 1, 2, 0, 0, 0]])
    assert evaluate(gt, pred).ari == pytest.approx(4 / 9)
    # gt = 1 1 0 0, pred = 1 0 0 0 -> sum_ij = 1 = expected -> ARI 0
    assert evaluate(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]])).ari == pytest.approx(0.0)


def test_dice_by_hand():
    pred = squares(boxes=[(1, (2, 6, 2, 6))])  # 16 of the 32 truth pixels
    assert evaluate(GT2, pred).dice == pytest.approx(2 * 16 / (32 + 16))


def test_min_size_drops_small_objects_on_both_sides():
    gt = squares(boxes=[(1, (2, 6, 2, 6)), (2, (10, 11, 10, 12))])  # 16 px and 2 px
    pred = squares(boxes=[(1, (2, 6, 2, 6)), (2, (15, 16, 15, 17))])
    assert evaluate(gt, pred).ap == pytest.approx(1 / 3)
    r = evaluate(gt, pred, min_size=3)
    assert r.ap == 1.0 and r.n_true == 1 and r.n_pred == 1


def test_ap_over_thresholds():
    gt = squares(boxes=[(1, (5, 15, 5, 15))])
    pred = squares(boxes=[(1, (5, 15, 6, 16))])  # IoU 90/110 = 0.818
    r = evaluate(gt, pred)
    assert [r.ap_by_threshold[t] for t in (0.5, 0.8, 0.85, 0.95)] == [1.0, 1.0, 0.0, 0.0]
    assert r.ap_50_95 == pytest.approx(7 / 10)


def test_shape_mismatch_and_bad_types():
    with pytest.raises(ValueError, match=r"\(20, 30\).*\(20, 31\)"):
        evaluate(GT2, np.zeros((20, 31), int))
    with pytest.raises(ValueError, match="integers"):
        evaluate(GT2, GT2.astype(float))


def test_a_mask_saved_as_integers_is_refused_not_scored_as_one_cell():
    """A 0/1 or 0/255 mask saved as integers: scored as one object it gave AP 0 (FN 1, FP 3)
    against three true cells, with no word of why."""
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 2:6], labels[10:14, 10:14], labels[2:6, 20:26] = 1, 2, 3
    for mask in ((labels > 0).astype(np.uint8), (labels > 0).astype(np.uint8) * 255):
        with pytest.raises(ValueError, match="binary mask"):
            evaluate(mask, labels)
        with pytest.raises(ValueError, match="binary mask"):
            evaluate(labels, mask)
    one = np.where(labels == 2, 1, 0)  # one object, in one piece: a label image
    assert evaluate(one, one).ap == 1.0


def test_mean_scores_map():
    a = evaluate(GT2, GT2)
    b = evaluate(GT2, np.where(GT2 == 1, 1, 0))
    assert mean_scores([a, b])["mAP"] == pytest.approx(0.75)


def test_contingency_counts_pixels():
    t = contingency(np.array([0, 1, 1, 2]), np.array([1, 1, 0, 0]), 2, 1)
    np.testing.assert_array_equal(t, [[0, 1], [1, 1], [1, 0]])
    assert adjusted_rand_index(np.array([[5]])) == 1.0


labels_strategy = arrays(np.int32, (8, 9), elements=st.integers(0, 4))


@settings(max_examples=60, deadline=None)
@given(labels_strategy, labels_strategy)
def test_properties(a, b):
    from scipy import ndimage as ndi

    def one_id_in_pieces(x):  # refused as a binary mask (the test above)
        ids = np.unique(x[x > 0])
        return len(ids) == 1 and ndi.label(x > 0)[1] > 1

    assume(not one_id_in_pieces(a) and not one_id_in_pieces(b))
    r = evaluate(a, b)
    assert 0.0 <= r.ap <= 1.0
    assert r.tp + r.fn == r.n_true == len(np.unique(a[a > 0]))
    assert r.tp + r.fp == r.n_pred
    assert -1.0 <= r.ari <= 1.0 + 1e-12
    assert 0.0 <= r.sm <= 1.0 + 1e-12
    assert evaluate(a, a).ap == 1.0


def test_tens_of_thousands_of_cells_in_bounded_memory():
    """40,000 cells a side: a dense (gt x pred) table would be 1.6e9 entries (13 GB per
    array); only the pairs that overlap are kept."""
    tiles = np.arange(1, 200 * 200 + 1, dtype=np.int32).reshape(200, 200)
    labels = np.kron(tiles, np.ones((2, 2), np.int32))  # 2 x 2 px cells
    r = evaluate(labels, labels)
    assert r.n_true == r.n_pred == r.tp == 40_000 and r.ap == r.ari == r.sm == 1.0
    merged = np.kron(np.arange(1, 100 * 200 + 1, dtype=np.int32).reshape(100, 200), np.ones((4, 2), np.int32))
    r = evaluate(labels, merged)  # every predicted cell covers two true ones: IoU 0.5
    assert (r.tp, r.fp, r.fn) == (20_000, 0, 20_000) and r.n_merged == 20_000  # each holds two
    assert r.per_true["best_iou"].eq(0.5).all()


@settings(max_examples=40, deadline=None)
@given(labels_strategy, labels_strategy)
def test_the_sorted_pair_count_equals_the_dense_one(a, b):
    """The pair table of a slide (np.unique) gives what the dense count gives."""
    import napari_cellseg.core.metrics as metrics

    try:
        dense = evaluate(a, b, min_size=2)
    except ValueError:
        return  # a mask-like image, refused either way
    original = metrics.DENSE_TABLE_MAX
    metrics.DENSE_TABLE_MAX = 1
    try:
        sparse = evaluate(a, b, min_size=2)
    finally:
        metrics.DENSE_TABLE_MAX = original
    s, d = sparse.summary(), dense.summary()
    assert s.keys() == d.keys()
    for key in s:  # NaN (no match: no mean IoU) equals NaN here
        assert s[key] == d[key] or (s[key] != s[key] and d[key] != d[key]), key
    assert sparse.per_true.equals(dense.per_true) and sparse.per_pred.equals(dense.per_pred)
