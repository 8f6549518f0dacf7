"""Block-wise segmentation on dask.distributed (workflows/large.py): the whole-image answer,
exactly, on a small synthetic tissue (600 x 700 px, blocks of 192-320 px)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
pytest.importorskip("torch")

from napari_cellseg.core.synthetic import make_whole_cell_image  # noqa: E402
from napari_cellseg.progress import drain  # noqa: E402

SHAPE = (600, 700)


def first_pixel_order(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..K by each object's first pixel in raster order: equal
    partitions of the image give equal arrays."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    keep = ids > 0
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lut[ids[keep][np.argsort(first[keep])]] = np.arange(1, keep.sum() + 1)
    return lut[labels]


@pytest.fixture(scope="module")
def tissue():
    image = make_whole_cell_image(seed=1, shape=SHAPE).image
    from napari_cellseg import segment

    reference = segment(image, device="cpu")
    return image, reference


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        yield c


def run(image, out, client, **kwargs):
    from napari_cellseg.workflows.large import segment_large

    kwargs.setdefault("device", "cpu")
    result = segment_large(image, out, client=client, **kwargs)
    return result, zarr.open_array(str(out / "0"), mode="r")[:]


# ---------------------------------------------------------------- probabilities
@pytest.mark.parametrize("shape", [(30, 20), (100, 90), (300, 260)])
def test_region_probabilities_equal_the_whole_image(tiny_model, shape):
    from napari_cellseg.core.preprocess import percentile_normalize
    from napari_cellseg.model.inference import iter_probabilities_region, predict_probabilities

    net, _ = tiny_model
    image = make_whole_cell_image(seed=2, shape=shape).image
    whole = predict_probabilities(net, image, device="cpu", tile=64, overlap=16, half=False)
    x = percentile_normalize(image)
    h, w = shape
    for rows, cols in [(slice(0, h), slice(0, w)), (slice(h // 3, h // 2 + 5), slice(1, w - 3)),
                       (slice(h - 7, h), slice(0, 9))]:
        part = drain(iter_probabilities_region(net, x, (rows, cols), device="cpu", tile=64, overlap=16,
                                               half=False))
        np.testing.assert_array_equal(part, whole[:, rows, cols])


def test_region_outside_the_image_is_an_error(tiny_model):
    from napari_cellseg.model.inference import iter_probabilities_region

    with pytest.raises(ValueError, match="outside the image"):
        drain(iter_probabilities_region(tiny_model[0], np.zeros((50, 50)), (slice(40, 60), slice(0, 5))))


# ---------------------------------------------------------------- the whole-image answer
@pytest.mark.parametrize(("block", "halo"), [(256, 64), (192, 32), (320, 48)])
def test_blocks_equal_the_whole_image(tissue, client, tmp_path, block, halo):
    image, reference = tissue
    result, labels = run(image, tmp_path / "out.zarr", client, block=block, halo=halo)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(first_pixel_order(labels), first_pixel_order(reference))
    # Consecutive ids, one table row each, in id order; areas and centroids are the cells'.
    n = int(reference.max())
    assert result.n_cells == n == int(labels.max())
    assert np.array_equal(np.unique(labels), np.arange(n + 1))
    import pandas as pd

    from napari_cellseg.core.measure import cell_table

    table = pd.read_csv(result.table_path)
    assert table["label"].tolist() == list(range(1, n + 1))
    expected = cell_table(labels, image)
    np.testing.assert_array_equal(table["area_px"], expected["area_px"])
    np.testing.assert_allclose(table[["centroid_y", "centroid_x"]], expected[["centroid_y", "centroid_x"]],
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(table["mean_intensity"], expected["mean_intensity"], rtol=1e-12)
    assert table["bright"].tolist() == expected["bright"].tolist()
    # Ids are numbered block by block, then by first pixel: each block's ids are a run.
    first = {}
    for cell_id, (r, c) in enumerate(zip(*np.unravel_index(
            np.unique(labels.ravel(), return_index=True)[1][1:], labels.shape), strict=True), 1):
        first[cell_id] = (r // block, c // block, r, c)
    assert sorted(first, key=first.get) == list(range(1, n + 1))
    # Every id is as connected as in the whole-image answer (the core may leave a cell in
    # pieces where its foreground is cut; the blocks add no cut of their own).
    from scipy import ndimage as ndi

    def pieces(lab):
        return [ndi.label(lab[sl] == i)[1] for i, sl in enumerate(ndi.find_objects(lab), 1) if sl]

    assert sorted(pieces(labels)) == sorted(pieces(reference))
    # The pyramid: level k is level 0 taken every 2**k pixels; NGFF 0.4 multiscales.
    root = zarr.open_group(str(result.path), mode="r")
    levels = root.attrs["multiscales"][0]["datasets"]
    assert len(levels) >= 2
    np.testing.assert_array_equal(root["1"][:], labels[::2, ::2])
    assert root.attrs["napari_cellseg"]["complete"] is True
    assert root.attrs["napari_cellseg"]["sample_stride"] == 1  # every pixel: exact percentiles


@pytest.fixture(scope="module")
def small_tissue(tissue):
    """A 300 x 260 corner of the tissue and its whole-image answer."""
    from napari_cellseg import segment

    image = np.ascontiguousarray(tissue[0][:300, :260])
    return image, segment(image, device="cpu")


def test_any_block_and_halo_give_the_whole_image(small_tissue, client, tmp_path_factory):
    """Property: for block sizes (multiples of 32, from 64 px) and halos (8-96 px) drawn by
    hypothesis, the labels and the table equal the one-piece run's."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    image, reference = small_tissue
    expected = first_pixel_order(reference)

    @hypothesis.settings(max_examples=6, deadline=None, derandomize=True, database=None)
    @hypothesis.given(block=st.integers(2, 10).map(lambda k: 32 * k), halo=st.integers(8, 96))
    def check(block, halo):
        out = tmp_path_factory.mktemp("prop") / "out.zarr"
        result, labels = run(image, out, client, block=block, halo=halo)
        np.testing.assert_array_equal(first_pixel_order(labels), expected)
        assert result.n_cells == int(reference.max())
        import pandas as pd

        table = pd.read_csv(result.table_path)
        assert table["label"].tolist() == list(range(1, result.n_cells + 1))
        areas = np.bincount(labels.ravel())[1:]
        np.testing.assert_array_equal(table["area_px"].to_numpy(), areas)

    check()


def test_a_too_small_halo_is_healed(tissue, client, tmp_path):
    image, reference = tissue
    result, labels = run(image, tmp_path / "out.zarr", client, block=320, halo=16)
    assert result.healed, "halo 16 px is less than a cell: some block must have been rerun"
    assert all(h >= 32 for h in result.healed.values())
    np.testing.assert_array_equal(first_pixel_order(labels), first_pixel_order(reference))


def test_resume_recomputes_only_missing_blocks(tissue, client, tmp_path):
    image, _ = tissue
    out = tmp_path / "out.zarr"
    first, labels = run(image, out, client, block=256, halo=64)
    assert len(first.computed) == first.n_blocks == 9 and not first.skipped
    markers = sorted((out / "_work" / "blocks").glob("*.json"))
    stamps = {m.name: m.stat().st_mtime_ns for m in markers}
    again, labels2 = run(image, out, client, block=256, halo=64)
    assert again.computed == [] and len(again.skipped) == 9
    assert {m.name: m.stat().st_mtime_ns for m in markers} == stamps
    np.testing.assert_array_equal(labels2, labels)
    # A block whose marker is missing (its task was killed) is the only one run again.
    (out / "_work" / "blocks" / "1.2.json").unlink()
    third, labels3 = run(image, out, client, block=256, halo=64)
    assert third.computed == [(1, 2)]
    assert {m.name: m.stat().st_mtime_ns for m in markers if m.name != "1.2.json"} == \
        {k: v for k, v in stamps.items() if k != "1.2.json"}
    np.testing.assert_array_equal(labels3, labels)
    # Other settings on the same output: refused, not mixed.
    with pytest.raises(ValueError, match="other settings"):
        run(image, out, client, block=256, halo=32)
    # Another image of the same shape and percentiles (a file replaced under its name), or
    # another tile size: refused too.
    other = image.copy()
    other[0, :2] = other[0, 1::-1]
    with pytest.raises(ValueError, match=r"other settings \(sample_sha256\)"):
        run(other, out, client, block=256, halo=64)
    with pytest.raises(ValueError, match=r"other settings \(tile\)"):
        run(image, out, client, block=256, halo=64, tile=256)
    with pytest.raises(FileExistsError, match="resume"):
        run(image, out, client, block=256, halo=64, resume=False)


def test_an_empty_region_gives_no_cells(client, tmp_path):
    scene = make_whole_cell_image(seed=3, shape=SHAPE)
    image = scene.image.copy()
    rng = np.random.default_rng(0)
    background = float(np.median(image[scene.labels == 0]))
    image[:, 350:] = background + rng.normal(0, 0.01, (SHAPE[0], 350)).astype(np.float32)
    result, labels = run(image, tmp_path / "out.zarr", client, block=256, halo=64)
    assert result.n_cells > 100
    assert np.unique(labels[:, 360:]).tolist() == [0]


def test_refused_settings_say_why(tissue, tmp_path):
    from napari_cellseg.workflows.large import segment_large

    image, _ = tissue
    for kwargs, phrase in [({"seed_split": "shape"}, "shape"), ({"background": "otsu3"}, "otsu3"),
                           ({"intensity_weight": 1.0}, "intensity_weight"),
                           ({"pixel_size": 0.3}, "rescale"), ({"block": 100}, "multiple of 32"),
                           ({"model": "dense_tcells_x2"}, "2x model")]:
        with pytest.raises(ValueError, match=phrase):
            segment_large(image, tmp_path / "x.zarr", **kwargs)
    assert not (tmp_path / "x.zarr").exists()
    # --overwrite deletes only a napari-cellseg output, never a folder of other files.
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not replaced, even with --overwrite"):
        segment_large(image, folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep"


def test_cli_against_a_scheduler_on_loopback(tissue, client, tmp_path, capsys):
    import tifffile

    from napari_cellseg.cli import main

    image, reference = tissue
    tif = tmp_path / "slide.tif"
    tifffile.imwrite(tif, image, tile=(128, 128))
    out = tmp_path / "slide.zarr"
    address = client.scheduler.address
    assert address.startswith("tcp://127.0.0.1")
    argv = ["segment-large", str(tif), "--out", str(out), "--block", "256", "--halo", "64",
            "--scheduler", address]
    assert main(argv) == 0
    n = int(reference.max())
    assert f"{n} cells in 9 blocks" in capsys.readouterr().out
    labels = zarr.open_array(str(out / "0"), mode="r")[:]
    np.testing.assert_array_equal(first_pixel_order(labels), first_pixel_order(reference))
    assert len((out / "cells.csv").read_text().splitlines()) == n + 1
    record = json.loads((out / ".zattrs").read_text())["napari_cellseg"]
    assert record["source"] == str(tif)
    # An existing output needs --resume or --overwrite; --resume finds everything done.
    assert main(argv) == 2
    assert main([*argv, "--resume"]) == 0
    assert "0 computed, 9 already done" in capsys.readouterr().out


def test_a_fragment_its_owner_block_does_not_list_is_an_error_not_a_shared_id(tmp_path):
    """Block (0, 1) holds a fragment of a cell whose first pixel lies in block (0, 0), which
    does not list it: searchsorted gave it the id of a neighbouring cell (two cells with
    one id, the table a row short)."""
    import types

    import zarr

    from napari_cellseg.workflows.large import _create, _relabel_task

    out, (H, W, b) = tmp_path / "fake.zarr", (64, 128, 64)
    root = zarr.open_group(str(out), mode="w", zarr_format=2)
    _create(root, "0", (H, W), (b, b), "int32")
    for d in ("owned", "relabel"):
        (out / "_work" / d).mkdir(parents=True, exist_ok=True)
    prov = zarr.open_array(str(out / "_work" / "provisional"), mode="w", shape=(H, W), chunks=(b, b),
                           dtype="int64", fill_value=0, zarr_format=2)
    a, c, x = 10 * W + 5 + 1, 30 * W + 70 + 1, 15 * W + 60 + 1  # names: first pixel + 1
    p = np.zeros((H, W), np.int64)
    p[10:14, 5:9], p[30:34, 70:74], p[15:18, 64:68] = a, c, x
    prov[:] = p
    np.save(out / "_work" / "owned" / "0.0.npy", np.array([a]))
    np.save(out / "_work" / "owned" / "0.1.npy", np.array([c]))
    run = types.SimpleNamespace(shape=(H, W), block=b, out=str(out))
    assert _relabel_task(run, 0, 0, np.array([0, 1]), 1) == 0
    with pytest.raises(RuntimeError, match=r"does not list.*larger halo"):
        _relabel_task(run, 0, 1, np.array([0, 1]), 1)


def test_the_slides_own_pixel_size_is_read_and_nan_between_samples_is_found(tissue, client, tmp_path):
    """A slide file that states another pixel size than the model's is refused, not run at
    the wrong scale (its areas 4x off); one at the model's measures area_um2. A NaN that the
    strided sample misses is found by its block."""
    import tifffile

    from napari_cellseg.workflows.large import segment_large

    image, _ = tissue
    fine = tmp_path / "fine.tif"
    tifffile.imwrite(fine, image[:256, :256], imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um"})
    for unknown in (None, 0, 0.0):  # 0 means unknown too (the CLI's --pixel-size 0): it was run at 0.5
        with pytest.raises(ValueError, match=r"states 0.25 µm per pixel.*rescale"):
            segment_large(fine, tmp_path / "fine.zarr", pixel_size=unknown)
    assert not (tmp_path / "fine.zarr").exists()
    holed = image[:256, :256].astype(np.float32).copy()
    holed[101, 101] = np.nan  # off the sample's grid (stride 16 at 256 sample pixels)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(first at row 101, column 101\)"):
        run(holed, tmp_path / "nan.zarr", client, block=128, halo=32, sample_pixels=256)


def test_an_ome_zarr_slides_pixel_size_is_read_as_a_tiffs(tmp_path):
    """Only X was read: non-square pixels passed, as would a scale no microscope gives."""
    import zarr

    from napari_cellseg.workflows.large import _source_pixel_size

    def slide(name, scale, unit="micrometer"):
        group = zarr.open_group(str(tmp_path / name), mode="w")
        group.create_array("0", shape=(64, 64), dtype="uint16")
        group.attrs["multiscales"] = [{"version": "0.4", "axes": [
            {"name": "y", "type": "space", "unit": unit}, {"name": "x", "type": "space", "unit": unit}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
        return ("path", str(tmp_path / name))

    assert _source_pixel_size(slide("a.zarr", [0.5, 0.5])) == 0.5
    assert _source_pixel_size(slide("nm.zarr", [250.0, 250.0], "nanometer")) == 0.25
    with pytest.raises(ValueError, match=r"not square: 0\.5 µm in X, 1 µm in Y"):
        _source_pixel_size(slide("ns.zarr", [1.0, 0.5]))
    assert _source_pixel_size(slide("px.zarr", [1.0, 1.0], "")) is None  # no unit: pixels
    assert _source_pixel_size(slide("far.zarr", [353.0, 353.0])) is None  # warned, ignored


def test_cluster_failures_and_an_empty_zarr_are_said_in_words(tmp_path, monkeypatch, capsys):
    from distributed.scheduler import KilledWorker

    from napari_cellseg import cli

    empty = tmp_path / "empty.zarr"
    zarr.open_group(str(empty), mode="w")
    assert cli.main(["segment-large", str(empty), "--out", str(tmp_path / "o.zarr")]) == 2
    assert "no image in it" in capsys.readouterr().err

    def killed(args):
        raise KilledWorker("cellseg-block-0-0", "tcp://127.0.0.1:1", 3)

    monkeypatch.setitem(cli.COMMANDS, "segment-large", (cli.COMMANDS["segment-large"][0], killed))
    assert cli.main(["segment-large", str(empty), "--out", str(tmp_path / "o.zarr")]) == 2
    assert "the dask cluster failed: KilledWorker" in capsys.readouterr().err
