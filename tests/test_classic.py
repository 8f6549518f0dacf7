"""The lesson's seven tests, and one per extension."""

import numpy as np
import pytest

from napari_cellseg.core import classic
from napari_cellseg.core import synthetic as syn


# --- the lesson's seven -------------------------------------------------------------
def test_smoothing_reduces_noise_variance():
    noise = syn.make_pure_noise()
    assert classic.smooth(noise).var() < 0.1 * noise.var()


def test_smoothing_preserves_shape():
    image = np.random.default_rng(1).random((37, 53))
    assert classic.smooth(image).shape == (37, 53)


def test_constant_image_interior_unchanged():
    image = np.full((40, 40), 0.7)
    np.testing.assert_allclose(classic.smooth(image)[10:30, 10:30], 0.7, atol=1e-12)


def test_default_pipeline_counts_eight_cells():
    image, _ = syn.make_image()
    assert classic.segment_classic(image).max() == 8


def test_cell_areas_near_analytic_value():
    image, _ = syn.make_image()
    sizes = classic.cell_sizes(classic.segment_classic(image))
    assert len(sizes) == 8
    assert np.all((sizes >= 50) & (sizes <= 350))
    # Analytic: pi * 2 * (6^2 + 2^2) * ln(0.9 / 0.5) = 147.7 px^2.
    assert np.mean(sizes) == pytest.approx(147.7, rel=0.1)


def test_threshold_above_maximum_gives_no_cells():
    image, _ = syn.make_image()
    assert classic.segment_classic(image, threshold=image.max() + 1).max() == 0


def test_pure_noise_false_cells_depend_on_threshold():
    noise = syn.make_pure_noise()
    assert classic.segment_classic(noise, threshold=0.05).max() > 0
    assert classic.segment_classic(noise, threshold=0.50).max() == 0


# --- extensions -------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(10))
def test_watershed_splits_two_cells_14px_apart(seed):
    scene = syn.make_pair_image(separation=14.0, seed=seed)
    assert classic.segment_classic(scene.image).max() == 1  # the threshold alone merges them
    split = classic.segment_classic(scene.image, split="intensity")
    assert split.max() == 2
    # Each piece holds one true centre.
    (r0, c0), (r1, c1) = np.round(scene.centers).astype(int)
    assert split[r0, c0] != split[r1, c1] and split[r0, c0] > 0 and split[r1, c1] > 0


def test_intensity_split_without_smoothing_marks_the_centres():
    """sigma 0 (no smoothing) is allowed; the split's markers then took a LoG at scale 0,
    which scipy returns as twice the image, so they sat on the rims: 6 cells for one blob."""
    yy, xx = np.mgrid[:40, :60]
    image = np.exp(-((yy - 20) ** 2 + (xx - 23) ** 2) / 50) + np.exp(-((yy - 20) ** 2 + (xx - 37) ** 2) / 50)
    labels = classic.segment_classic(image, sigma=0, threshold=0.3, split="intensity", normalize="none")
    assert labels.max() == 2 and labels[20, 23] == 1 and labels[20, 37] == 2  # one per centre
    with pytest.raises(ValueError, match="marker_sigma must be > 0"):
        classic.split_touching(image > 0.3, image, "intensity", marker_sigma=0)


def test_distance_watershed_splits_a_neck():
    yy, xx = np.mgrid[:40, :60]
    mask = ((yy - 20) ** 2 + (xx - 18) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 36) ** 2 < 100)
    assert mask[20, 27]  # the two discs touch through a neck
    labels = classic.split_touching(mask, method="distance", min_distance=5)
    assert labels.max() == 2
    assert labels[20, 18] != labels[20, 36]


def test_bright_dim_classification_precision_recall():
    """Threshold 0.18, not 0.50: a dim cell's smoothed peak (0.36) lies below 0.50, so
    the default would miss every dim cell. 0.18 is half the dim peak and ~8 sd of the
    smoothed noise (0.15 / (2 sqrt(pi) * 2) = 0.021) above zero: no false cells. At that
    level bright cells 24 px apart touch, so the intensity watershed splits them."""
    tp = {True: 0, False: 0}
    n_pred = {True: 0, False: 0}
    n_true = {True: 0, False: 0}
    for seed in range(20):
        scene = syn.make_bright_dim_image(seed=seed)
        labels = classic.segment_classic(scene.image, threshold=0.18, split="intensity")
        bright, _ = classic.classify_bright_dim(scene.image, labels)
        # A predicted cell is the one under a true centre (IoU would punish the wider
        # outline that a low threshold gives, which is not what is tested here).
        centre_label = labels[tuple(np.round(scene.centers).astype(int).T)]
        assert len(set(centre_label)) == 8 and centre_label.min() > 0
        for true_bright, pred_id in zip(scene.bright, centre_label, strict=True):
            is_bright = bool(bright[pred_id - 1])
            n_pred[is_bright] += 1
            n_true[bool(true_bright)] += 1
            tp[is_bright] += int(is_bright == bool(true_bright))
    for cls in (True, False):
        assert tp[cls] / n_pred[cls] >= 0.95, f"precision of {'bright' if cls else 'dim'}"
        assert tp[cls] / n_true[cls] >= 0.95, f"recall of {'bright' if cls else 'dim'}"


def test_local_threshold_restores_count_under_gradient():
    scene = syn.make_bright_dim_image(gradient=syn.GRADIENT_AMPLITUDE)
    assert classic.segment_classic(scene.image, threshold=0.18).max() != 8
    assert classic.segment_classic(scene.image, threshold=0.18, method="local").max() == 8
    exact_global = exact_local = 0
    for seed in range(20):
        img = syn.make_bright_dim_image(seed=seed, gradient=syn.GRADIENT_AMPLITUDE).image
        exact_global += classic.segment_classic(img, threshold=0.18).max() == 8
        exact_local += classic.segment_classic(img, threshold=0.18, method="local").max() == 8
    assert exact_local >= 16 and exact_global <= 6


def test_relabel_is_exact_on_a_tiny_array():
    from napari_cellseg.core.labels import compact, relabel

    labels = np.array([[0, 5, 5, 0], [9, 9, 9, 0], [0, 0, 2, 0]])
    out = relabel(labels, min_size=2)
    np.testing.assert_array_equal(out, [[0, 1, 1, 0], [2, 2, 2, 0], [0, 0, 0, 0]])
    assert out.dtype == np.int32
    # keep drops by id; ids and areas of what is left come back.
    keep = np.ones(10, bool)
    keep[5] = False
    out, ids, areas = compact(labels, keep=keep)
    np.testing.assert_array_equal(out, [[0, 0, 0, 0], [2, 2, 2, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(ids, [2, 9])
    np.testing.assert_array_equal(areas, [1, 3])
    # Huge sparse ids take the sort-based path with the same answer.
    huge = np.where(labels > 0, labels + 2**40, 0)
    out, ids, areas = compact(huge, min_size=2, dtype=np.int64)
    np.testing.assert_array_equal(out, [[0, 1, 1, 0], [2, 2, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(ids, [5 + 2**40, 9 + 2**40])
    with pytest.raises(ValueError, match=">= 0"):
        relabel(np.array([[0, -1]]))


def test_otsu_method_finds_the_cells():
    image, _ = syn.make_image()
    assert classic.segment_classic(image, method="otsu").max() == 8


@pytest.mark.parametrize("bad", [np.zeros((3, 4, 5)), np.array([[np.nan, 1.0], [1.0, 1.0]])])
def test_bad_input_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"2-D|NaN"):
        classic.segment_classic(bad)


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="threshold method"):
        classic.segment_classic(np.zeros((8, 8)), method="magic")
    with pytest.raises(ValueError, match="split method"):
        classic.segment_classic(np.ones((8, 8)), threshold=0.5, split="magic")


def test_constant_and_tiny_images_give_no_cells():
    assert classic.segment_classic(np.zeros((64, 64))).max() == 0
    assert classic.segment_classic(np.ones((1, 1)), threshold=2).max() == 0
    assert classic.segment_classic(np.zeros((64, 64)), method="otsu").max() == 0
