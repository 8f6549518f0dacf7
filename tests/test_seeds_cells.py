"""Seeds and seeded watershed on synthetic whole-cell images with exact truth.

The probability maps here are made from the truth (the ideal UNet output, blurred), so
these tests check the seeds and cells stages alone; the shipped model is checked
end-to-end in test_pipeline.py.
"""

import itertools

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cellseg.core import cells as cells_mod
from napari_cellseg.core import seeds as seeds_mod
from napari_cellseg.core import synthetic as syn
from napari_cellseg.core.metrics import evaluate
from napari_cellseg.core.params import Grid
from napari_cellseg.model.targets import make_targets
from napari_cellseg.pipeline import Prediction, SegmentParams

PIXEL = 0.5  # µm per pixel of the synthetic scenes
RADIUS_PX = 9.0


def ideal_probabilities(labels, nuclei=None, blur=1.0):
    t = make_targets(labels, nuclei)
    p = np.stack([ndi.gaussian_filter((t == k).astype(np.float32), blur) for k in range(3)])
    return p / p.sum(0)


def scene_prediction(seed=0, zoom=1, shape=(160, 160)):
    scene = syn.make_whole_cell_image(seed=seed, shape=shape, cell_radius=RADIUS_PX, density=0.85)
    labels = scene.labels
    probs = ideal_probabilities(labels)
    if zoom != 1:  # the same physical maps on a finer grid
        labels = np.kron(labels, np.ones((zoom, zoom), labels.dtype))
        probs = ndi.zoom(probs, (1, zoom, zoom), order=1, grid_mode=True, mode="grid-constant")
        probs = np.clip(probs, 0, 1) / np.clip(probs, 0, 1).sum(0)
    image = np.kron(scene.image, np.ones((zoom, zoom), np.float32))
    pred = Prediction(image, probs, image, Grid(PIXEL / zoom, 2 * RADIUS_PX * PIXEL))
    return pred, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_touching_cells_are_split(seed):
    pred, labels = scene_prediction(seed)
    from napari_cellseg.model.targets import touching_border

    assert labels.max() > 40
    assert np.unique(labels[touching_border(labels)]).size > 20  # many cells touch others
    r = evaluate(labels, pred.segment())
    assert r.ap >= 0.9
    assert r.n_merged <= 1 and r.n_split <= 1


def test_exactly_one_cell_per_seed():
    pred, _ = scene_prediction(3)
    p = pred.params(min_cell_area=0.0)
    cells, seeds = pred.segment_grid(p)
    assert cells.max() == seeds.max()
    # Every seed lies inside the one cell grown from it.
    for s in range(1, seeds.max() + 1):
        assert len(np.unique(cells[seeds == s])) == 1


@pytest.mark.parametrize(("split", "name", "values"), [
    ("shape", "h", (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 6.0)),
    ("probability", "h_probability", (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0)),
])
def test_larger_h_never_gives_more_seeds(split, name, values):
    pred, _ = scene_prediction(4)
    # Touching cells whose seed probabilities run into each other, as in dense tissue.
    pred.probabilities[0] = ndi.gaussian_filter(pred.probabilities[0], 2.5)
    counts = [pred.seeds(pred.params(seed_split=split, **{name: v})).max() for v in values]
    assert all(a >= b for a, b in itertools.pairwise(counts)), counts
    assert counts[0] > counts[-1]


@pytest.mark.parametrize("split", ["shape", "probability"])
def test_sensitivity_moves_seed_count_monotonically(split):
    pred, labels = scene_prediction(5)
    # Seeds of every strength, as a real model gives: weak ones need a high sensitivity.
    gain = np.random.default_rng(0).uniform(0.05, 1.0, labels.max() + 1)
    pred.probabilities[0] *= gain[labels]
    counts = [pred.seeds(pred.params(sensitivity=s, seed_split=split)).max() for s in (0, 20, 40, 60, 80, 100)]
    assert all(a <= b for a, b in itertools.pairwise(counts)), counts
    assert counts[0] < counts[-1] <= labels.max()


def test_sensitivity_floor():
    assert seeds_mod.sensitivity_floor(60) == pytest.approx(0.4)
    assert seeds_mod.sensitivity_floor(100) == seeds_mod.MIN_SEED_FLOOR
    assert seeds_mod.sensitivity_floor(0) == 1.0
    with pytest.raises(ValueError):
        seeds_mod.sensitivity_floor(-1)


def test_probability_split_cuts_at_the_dip_between_maxima():
    # Two peaks, 0.9 and 0.8, joined through a saddle at 0.5: the lower peak's dynamic
    # is 0.3, so it is its own seed for h < 0.3 and merges for h > 0.3. (Dynamics are
    # those of the pixel graph's edges, weighted by the lower end: a peak counts from
    # its two highest adjacent pixels, hence the two-pixel peaks here.)
    height = np.array([[0.1, 0.9, 0.9, 0.6, 0.5, 0.8, 0.8, 0.1]], np.float32)
    splitter = seeds_mod.SeedSplitter(height > 0.05, height)
    cut = splitter.cut(0.25)[0]
    assert len(set(cut[:4])) == 1 and len(set(cut[5:])) == 1 and cut[0] != cut[7]
    assert set(cut) == {1, 2}
    np.testing.assert_array_equal(splitter.cut(0.35)[0], [1] * 8)
    # The floor keeps only pixels above it; a merged seed may come in pieces.
    low = splitter.cut(0.25, floor=0.75)[0]
    assert low[1] == low[2] != low[5] == low[6] and set(low[[0, 3, 4, 7]]) == {0}
    np.testing.assert_array_equal(splitter.cut(0.35, floor=0.75)[0], [0, 1, 1, 0, 0, 1, 1, 0])
    # A peak entirely below the floor leaves no seed.
    assert splitter.cut(0.25, floor=0.95).max() == 0


def test_sensitivity_levels_match_the_paper():
    assert seeds_mod.sensitivity_level(60) == 2  # the third of five thresholds
    assert seeds_mod.sensitivity_level(100) == 0
    assert seeds_mod.sensitivity_level(0) == 4
    with pytest.raises(ValueError):
        seeds_mod.sensitivity_level(101)


def test_pixel_size_scales_physical_parameters():
    coarse, _labels = scene_prediction(6, zoom=1)
    fine, _labels2 = scene_prediction(6, zoom=2)
    for params in ({}, {"seed_split": "shape", "h": 1.0}, {"seed_split": "shape"}, {"sensitivity": 80}):
        a = coarse.segment(**params)
        b = fine.segment(**params)
        assert abs(int(a.max()) - int(b.max())) <= 1
        # Same cells, half the pixel size: four times the pixel area.
        assert np.bincount(b.ravel())[1:].mean() == pytest.approx(4 * np.bincount(a.ravel())[1:].mean(), rel=0.1)
    assert fine.grid.min_area_px(fine.defaults) == pytest.approx(4 * coarse.grid.min_area_px(coarse.defaults), rel=0.05)


def test_no_cells_gives_no_cells():
    probs = np.zeros((3, 64, 64), np.float32)
    probs[2] = 1.0
    pred = Prediction(np.zeros((64, 64), np.float32), probs, np.zeros((64, 64), np.float32), Grid(0.5))
    assert pred.segment().max() == 0
    assert pred.stages()["cells"].max() == 0


def test_basin_graph_matches_pixel_watershed():
    pred, _labels = scene_prediction(7)
    p = pred.defaults
    cells_fast, seeds = pred.segment_grid(p)
    fg, _ = pred.cell_stage.foreground(p, int(seeds.max()))
    reference = cells_mod.seeded_watershed(pred.cell_stage.landscape(p), seeds, fg, pred.grid.min_area_px(p))
    r = evaluate(reference, cells_fast, iou=0.8)
    assert r.ap >= 0.95


def test_seed_splitter_cut_is_h_maxima_watershed():
    # Two discs joined by a thin bridge: the distance has two maxima of dynamic ~4 px.
    mask = np.zeros((30, 50), bool)
    yy, xx = np.mgrid[:30, :50]
    mask |= (yy - 15) ** 2 + (xx - 13) ** 2 <= 36
    mask |= (yy - 15) ** 2 + (xx - 36) ** 2 <= 36
    mask[14:17, 13:37] = True
    splitter = seeds_mod.SeedSplitter(mask)
    assert splitter.cut(1.0).max() == 2
    assert splitter.cut(10.0).max() == 1
    # A separate component stays separate at any h.
    mask[2:5, 45:48] = True
    assert seeds_mod.SeedSplitter(mask).cut(100.0).max() == 2


def _same_partition(a, b):
    """Same labelled pixels, grouped the same way (label ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def test_seed_hierarchy_in_parts_cuts_like_one(monkeypatch):
    # Components share no hierarchy: built in parts of a few hundred pixels, every cut
    # groups the same pixels as one hierarchy over the whole mask.
    pred, _labels = scene_prediction(4)
    smoothed = pred.seed_stage.smoothed
    whole = seeds_mod.probability_splitter(smoothed)
    assert len(whole.parts) == 1
    monkeypatch.setattr(seeds_mod, "PART_PIXELS", 300)
    parts = seeds_mod.probability_splitter(smoothed)
    assert len(parts.parts) > 3
    for h, floor in [(0.05, 0.1), (0.15, 0.4), (0.5, 0.6)]:
        a, b = whole.cut(h, floor, core=True), parts.cut(h, floor, core=True)
        assert a.max() == b.max() > 10
        assert _same_partition(a, b)
    # Components larger than a part (part numbers skipped): the same seeds still.
    monkeypatch.setattr(seeds_mod, "PART_PIXELS", 20)
    tiny_parts = seeds_mod.probability_splitter(smoothed)
    assert _same_partition(whole.cut(0.15, 0.4, core=True), tiny_parts.cut(0.15, 0.4, core=True))


def test_unknown_parameter_is_an_error():
    pred, _ = scene_prediction(0, shape=(64, 64))
    with pytest.raises(TypeError, match="unknown"):
        pred.segment(hh=3)
    with pytest.raises(ValueError, match="h must be"):
        pred.segment(h=-1, seed_split="shape")
    with pytest.raises(ValueError, match="h_probability"):
        pred.segment(h_probability=1.5)
    with pytest.raises(ValueError, match="seed_split"):
        pred.segment(seed_split="round")
    with pytest.raises(ValueError, match="cell_threshold"):
        pred.segment(cell_threshold=1.0)
    assert SegmentParams().sensitivity == 60
    # Refused in words (they were numpy's TypeError, "'int' object is not iterable", or 1 µm).
    for bad in ({"cell_diameter": "7.5"}, {"cell_diameter": True}, {"cell_diameter": 0.0}):
        with pytest.raises(ValueError, match="cell_diameter must be a finite number"):
            SegmentParams(**bad)
    for bad in (5, "ab", (3, True)):
        with pytest.raises(ValueError, match="seed_diameter must be two finite diameters"):
            SegmentParams(seed_diameter=bad)
    assert SegmentParams(seed_diameter=np.array([3, 6])).seed_diameter == (3.0, 6.0)


def test_drop_dim_cells_exact():
    labels = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2], [0, 0, 0, 3, 3]])
    image = np.array([[0.5, 0.5, 0.0, 0.02, 0.02], [0.5, 0.5, 0.0, 0.06, 0.06], [0, 0, 0, 0.3, 0.3]])
    out = cells_mod.filter_cells(labels, 0, image, 0.05)
    # cell 2 averages 0.04 < 0.05: dropped; cells 1 and 3 renumbered 1 and 2
    np.testing.assert_array_equal(out, [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 2, 2]])


@pytest.mark.parametrize("split", ["shape", "probability"])
def test_detect_seeds_one_shot_matches_the_cached_path(split):
    pred, labels = scene_prediction(8)
    one_shot = seeds_mod.detect_seeds(pred.seed_probability, PIXEL, cell_diameter_um=pred.grid.cell_diameter,
                                      sensitivity=60, h=3.0, seed_split=split, h_probability=0.15)
    # One implementation: the same labels as the cached path, pixel for pixel.
    np.testing.assert_array_equal(one_shot, pred.seeds(pred.params(sensitivity=60, h=3.0, seed_split=split)))
    assert abs(int(one_shot.max()) - int(labels.max())) <= 0.05 * labels.max()


def test_background_rule_picks_the_area_closest_to_expected():
    # 10 seeds x 100 px expected = 1000 px: 900 is closer than 1500.
    assert cells_mod.choose_background_threshold(np.array([0.3, 0.6]), np.array([1500, 900]), 10, 100.0) == 0.6


def test_paper_background_rule_through_the_prediction():
    pred, labels = scene_prediction(9)
    p = pred.params(background="otsu3")
    cells, seeds = pred.segment_grid(p)
    n = int(seeds.max())
    # Worked out by hand from the stage's inputs: of the two 3-level Otsu thresholds of
    # the landscape, the one whose area above is closest to n typical cells.
    land = cells_mod.cell_landscape(pred.cell_probability)
    levels = cells_mod.background_thresholds(land)
    areas = np.array([np.count_nonzero(land > t) for t in levels])
    expected = levels[int(np.argmin(np.abs(areas - n * pred.grid.cell_area_px(p))))]
    assert pred.cell_stage.threshold(p, n) == expected
    assert not np.any(cells[land <= expected])  # no cell pixel below the threshold
    assert evaluate(labels, cells).ap >= 0.9


def test_intensity_weight_multiplies_the_paper_transform():
    pred, labels = scene_prediction(10)
    p = pred.params(intensity_weight=1.0)
    expected = cells_mod.cell_landscape(pred.cell_probability, pred.grid_image, 1.0)
    np.testing.assert_array_equal(pred.cell_stage.landscape(p), expected)
    assert not np.array_equal(expected, pred.cell_stage.landscape(pred.defaults))
    assert evaluate(labels, pred.segment(intensity_weight=1.0)).ap >= 0.85


def test_warm_stages_build_nothing_on_a_slider_move(monkeypatch):
    pred, _ = scene_prediction(11)
    moves = [{"seed_split": "shape", "sensitivity": s, "h": h} for s in (0, 40, 60, 100) for h in (0.5, 3.0)]
    moves += [{"sensitivity": s, "h_probability": h} for s in (20, 90) for h in (0.05, 0.5)]
    cold = [scene_prediction(11)[0].segment(**m) for m in moves]  # each from scratch
    shape = pred.params(seed_split="shape")
    assert not pred.is_warm(shape)
    pred.warm(shape)
    assert pred.is_warm(shape) and pred.is_warm()  # the default split is warmed too

    def no_build(*args, **kwargs):
        raise AssertionError("a hierarchy was built on a slider move")

    monkeypatch.setattr(seeds_mod, "SeedSplitter", no_build)
    monkeypatch.setattr(cells_mod, "BasinGraph", no_build)
    for m, expected in zip(moves, cold, strict=True):
        np.testing.assert_array_equal(pred.segment(**m), expected)
    assert not pred.is_warm({"intensity_weight": 0.5})  # another landscape: would build


def test_params_from_saved_mappings_and_grid_units():
    p = SegmentParams.from_mapping({"sensitivity": 80, "from_a_future_version": 1})
    assert p.sensitivity == 80 and p == SegmentParams(sensitivity=80)
    with pytest.raises(TypeError, match="unknown"):
        p.updated(sensitivty=3)
    assert p.updated(h=None) == p  # None keeps a value
    grid = Grid(pixel_size=0.25, cell_diameter=10.0)
    assert grid.px(2.0) == 8.0
    assert grid.h_px(SegmentParams(h=1.5)) == 6.0
    assert grid.seed_diameter_px(SegmentParams()) == (10.0, 26.0)  # 0.25 and 0.65 of 40 px
    assert grid.seed_diameter_px(SegmentParams(seed_diameter=(1, 2))) == (4.0, 8.0)
    assert grid.cell_area_px(SegmentParams()) == pytest.approx(np.pi * 20**2)
    assert grid.min_area_px(SegmentParams()) == round(0.2 * np.pi * 20**2)
    assert grid.min_area_px(SegmentParams(min_cell_area=3.0)) == 48
    assert grid.cell_area_px(SegmentParams(cell_diameter=5.0)) == pytest.approx(np.pi * 10**2)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="pixel_size"):
            Grid(bad)
    with pytest.raises(ValueError, match="sensitivity"):
        SegmentParams(sensitivity=101)
    with pytest.raises(ValueError, match="seed_diameter"):
        SegmentParams(seed_diameter=(2.0, 0.0))
    # Infinite, boolean or text values are refused in words: h = inf had merged every seed
    # of an image into one cell, min_cell_area = inf failed later as an OverflowError.
    for name, bad in (("h", float("inf")), ("h", float("nan")), ("min_cell_area", float("inf")),
                      ("intensity_weight", float("inf")), ("sensitivity", True), ("cell_threshold", "0.4"),
                      ("h_probability", "x")):
        with pytest.raises(ValueError, match=f"{name} must be"):
            SegmentParams(**{name: bad})


def test_higra_runs_on_a_python_thread_when_called_from_a_foreign_one():
    # A reused Qt pool thread (a napari worker) is a thread Python did not start: higra
    # crashed there, so the stages hand such calls to a Python-started thread.
    import _thread
    import threading

    from napari_cellseg.core._threads import on_python_thread

    @on_python_thread
    def where():
        return threading.current_thread().name

    assert where() == threading.current_thread().name  # in place on a Python thread
    done = threading.Event()
    seen = {}

    def foreign():
        seen["caller"] = type(threading.current_thread()).__name__
        seen["ran on"] = where()
        mask = np.zeros((20, 20), bool)
        mask[5:15, 5:15] = True
        seen["seeds"] = int(seeds_mod.SeedSplitter(mask).cut(1.0).max())
        done.set()

    _thread.start_new_thread(foreign, ())
    assert done.wait(30)
    assert seen["caller"] == "_DummyThread"
    assert seen["ran on"].startswith("napari-cellseg-higra")
    assert seen["seeds"] == 1


def test_stage_caches_keep_the_last_few_entries():
    """Sweeping the cell threshold over 18 values keeps 8 foreground masks, not 18."""
    from napari_cellseg.core._lru import LRUDict

    d = LRUDict(2)
    d["a"], d["b"] = 1, 2
    assert d["a"] == 1  # read: now the most recent
    d["c"] = 3
    assert list(d) == ["a", "c"]
    # get() is the stages' one read (thread-safe): it marks recency and misses with None.
    assert d.get("a") == 1 and d.get("b") is None and list(d) == ["c", "a"]
    with pytest.raises(ValueError):
        LRUDict(0)
    rng = np.random.default_rng(0)
    prob = ndi.gaussian_filter(rng.random((64, 64)), 3).astype(np.float32)
    stage = cells_mod.CellStage(prob, prob, Grid(0.5, 7.5))
    seeds = np.zeros((64, 64), np.int32)
    seeds[10, 10], seeds[40, 40] = 1, 2
    for t in np.arange(0.05, 0.95, 0.05):
        stage.segment(seeds, SegmentParams(cell_threshold=float(t)))
    assert len(stage._foregrounds) == 8
    first = stage.segment(seeds, SegmentParams(cell_threshold=0.05))  # evicted: rebuilt, the same
    fresh = cells_mod.CellStage(prob, prob, Grid(0.5, 7.5))
    assert np.array_equal(first, fresh.segment(seeds, SegmentParams(cell_threshold=0.05)))


def test_a_flat_landscape_is_one_basin():
    """skimage's watershed labels nothing on a constant image (no regional minimum), and
    seeds in it crashed the segmentation (a collapsed model's map, scored in training)."""
    from napari_cellseg.core.cells import BasinGraph

    graph = BasinGraph(np.full((20, 20), 0.7, np.float32))
    assert graph.n_basins == 1
    seeds = np.zeros((20, 20), np.int32)
    seeds[5, 5], seeds[15, 15] = 1, 2
    out = graph.segment(seeds, np.ones((20, 20), bool))
    assert set(np.unique(out)) == {1, 2} and out[5, 5] == 1 and out[15, 15] == 2
