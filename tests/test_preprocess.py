import numpy as np
import pytest

from napari_cellseg.core.preprocess import (
    percentile_normalize,
    rescale,
    restore_shape,
    scale_factor,
    tophat,
)
from napari_cellseg.pipeline import preprocess


def test_tophat_removes_a_smooth_background_and_keeps_cells():
    yy, xx = np.mgrid[:200, :200]
    background = 0.5 + 0.002 * xx + 0.001 * yy
    cells = np.zeros((200, 200))
    cells[50:60, 50:60] = 1.0
    cells[120:128, 140:150] = 2.0
    out = tophat(background + cells, size_px=40)
    # A ramp survives an opening by slope x half the square: (0.002 + 0.001) x 20 = 0.06.
    assert np.abs(out[(cells == 0)]).max() <= 0.0601
    assert out[55, 55] == pytest.approx(1.0, abs=0.05) and out[124, 145] == pytest.approx(2.0, abs=0.05)


def test_percentile_normalize():
    x = np.arange(1000, dtype=float).reshape(25, 40)
    n = percentile_normalize(x, 1, 99)
    assert n.dtype == np.float32
    assert np.percentile(n, 1) == pytest.approx(0.0, abs=1e-6) and np.percentile(n, 99) == pytest.approx(1.0, abs=1e-6)
    assert np.all(percentile_normalize(np.full((5, 5), 7.0)) == 0)
    # Values in physical units far below 1 are an image, not a constant one.
    tiny = percentile_normalize(x * 1e-10, 1, 99)
    np.testing.assert_allclose(tiny, n, atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        percentile_normalize(np.array([[1.0, np.nan]]))


def test_rescale_round_trip_and_factor():
    assert scale_factor(0.5, 0.65) == pytest.approx(0.5 / 0.65)
    assert scale_factor(None, 0.65) == 1.0
    with pytest.raises(ValueError):
        scale_factor(-1, 0.5)
    labels = np.zeros((100, 80), np.int32)
    labels[20:60, 10:50] = 3
    small = rescale(labels, 0.5, order=0)
    assert small.shape == (50, 40) and set(np.unique(small)) == {0, 3}
    back = restore_shape(small, labels.shape, order=0)
    np.testing.assert_array_equal(back, labels)  # exact: a one-pixel shift would show


def test_preprocess_rescales_to_the_model_pixel_size():
    image = np.random.default_rng(0).random((130, 100)).astype(np.float32)
    grid, px = preprocess(image, pixel_size=0.25, model_pixel_size=0.5)
    assert grid.shape == (65, 50) and px == 0.5
    grid, px = preprocess(image, pixel_size=None, model_pixel_size=0.5)
    assert grid.shape == image.shape and px == 0.5
    for bad in (np.zeros((4, 4)), np.zeros((3, 40, 40)), np.zeros((40, 40, 3)), np.full((20, 20), np.nan)):
        with pytest.raises(ValueError):
            preprocess(bad, None, 0.5)
