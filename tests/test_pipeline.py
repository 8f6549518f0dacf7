"""The pipeline end to end with the shipped model: preprocessing through predict, the
rescale round trip, progress records and warming in the predicting thread."""

import itertools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import napari_cellseg as ncs
from napari_cellseg.core.preprocess import rescale, tophat
from napari_cellseg.progress import Progress

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def crop():
    """A 192 x 192 crop of the bundled synthetic tissue (0.5 µm/px) and its truth."""
    import tifffile

    image = tifffile.imread(SAMPLES / "tissue.tif")[:192, :192].astype(np.float32)
    labels = tifffile.imread(SAMPLES / "tissue_masks.tif")[:192, :192]
    return image, labels


def test_tophat_runs_through_predict(crop):
    image, _ = crop
    pred = ncs.predict(image, tophat_um=20.0, device="cpu")
    # The shipped model's grid is 0.5 µm/px and no pixel size was given: no rescale, and
    # the grid image is the top-hat of 20 µm = 40 px, exactly.
    assert pred.grid.pixel_size == 0.5
    np.testing.assert_array_equal(pred.grid_image, tophat(image, 40.0))
    plain = ncs.predict(image, device="cpu")
    assert not np.array_equal(plain.grid_image, pred.grid_image)


def test_rescale_round_trip_at_another_pixel_size(crop):
    image, labels = crop
    native = ncs.predict(image, pixel_size=0.5, device="cpu")
    fine_image = np.kron(image, np.ones((2, 2), np.float32))  # the same cells at 0.25 µm/px
    fine_labels = np.kron(labels, np.ones((2, 2), labels.dtype))
    fine = ncs.predict(fine_image, pixel_size=0.25, device="cpu")
    # Rescaled to the model's grid, and back.
    assert fine.grid.pixel_size == 0.5
    assert fine.grid_image.shape == (192, 192)
    np.testing.assert_array_equal(fine.grid_image, rescale(fine_image, 0.5))
    cells = fine.segment()
    assert cells.shape == fine_image.shape and cells.dtype == np.int32
    grid_cells, _ = fine.segment_grid()
    assert cells.max() == grid_cells.max()  # nearest-neighbour upsampling loses no cell
    ap_native = ncs.evaluate(labels, native.segment()).ap
    ap_fine = ncs.evaluate(fine_labels, cells).ap
    assert ap_native >= 0.9
    assert ap_fine >= ap_native - 0.05


def test_labels_shrunk_to_the_input_are_numbered_without_gaps(crop):
    """Cells upsampled onto the model grid (pixel size 1 µm: zoom 2) come back by nearest
    neighbour; a one-pixel cell there can vanish, and its id must not leave a gap, or the
    largest id (what a count reads) overstates the cells."""
    image, _ = crop
    pred = ncs.predict(image[:32, :32], pixel_size=1.0, device="cpu")
    assert pred.grid_image.shape == (64, 64)
    grid = np.zeros((64, 64), np.int32)
    grid[0:8, 0:8], grid[18, 18], grid[30:40, 30:40] = 1, 2, 3
    assert np.array_equal(np.unique(pred.to_input(grid, order=0)), [0, 1, 3])  # cell 2 vanishes
    out = pred.labels_to_input(grid)
    assert out.dtype == np.int32 and np.array_equal(np.unique(out), [0, 1, 2])
    assert np.array_equal(out == 2, pred.to_input(grid, order=0) == 3)  # the order is kept


def test_progress_records_and_warm_in_the_predicting_thread(crop):
    from napari_cellseg.pipeline import iter_predict, iter_predict_planes
    from napari_cellseg.progress import drain

    image, _ = crop
    records = []
    pred = drain(iter_predict(image, device="cpu", tile=128, warm={"seed_split": "shape"}), records.append)
    assert all(isinstance(r, Progress) for r in records)
    tiles = [r for r in records if not r.message]
    assert [r.done for r in tiles] == list(range(1, tiles[0].total + 1)) and tiles[0].unit == "tiles"
    assert tiles[0].total > 1
    assert records[-1].message == "preparing the live sliders"
    assert pred.is_warm({"seed_split": "shape", "sensitivity": 100})
    assert pred.is_warm()
    # Without warm, nothing is built ahead.
    alone = ncs.predict(image, device="cpu")
    assert not alone.is_warm()

    stack = np.stack([image, image[::-1]])
    steps = []
    preds = drain(iter_predict_planes(stack, device="cpu"), steps.append)
    assert len(preds) == 2
    assert [s.total for s in steps] == [200] * len(steps) and steps[-1].done == 200
    assert all(a.done <= b.done for a, b in itertools.pairwise(steps))
    assert steps[0].message.startswith("plane 1 of 2")
    # Each plane as if segmented alone.
    np.testing.assert_array_equal(preds[0].segment(), alone.segment())
    np.testing.assert_array_equal(preds[1].segment(), ncs.predict(image[::-1], device="cpu").segment())


def test_constant_image_gives_no_cells():
    pred = ncs.predict(np.full((64, 64), 7.0, np.float32), device="cpu")
    assert pred.segment().max() == 0
    assert pred.stages()["cells"].max() == 0
