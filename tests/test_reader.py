"""The napari reader for segment_large outputs (_reader.py): lazy multiscale labels, the
source image where it can be opened, None for any folder or file that is not ours."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")
pytest.importorskip("torch")

from napari_cellseg._reader import TABLE_KEY, napari_get_reader  # noqa: E402
from napari_cellseg.core.synthetic import make_whole_cell_image  # noqa: E402

SHAPE = (300, 260)  # blocks of 128 px: 3 x 3 blocks, levels (300, 260), (150, 130), (75, 65)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """(output folder, source image, its zarr path): one small run from a zarr array."""
    from napari_cellseg.workflows.large import segment_large

    folder = tmp_path_factory.mktemp("slide")
    image = make_whole_cell_image(seed=1, shape=SHAPE).image
    source = folder / "slide_image.zarr"
    zarr.open_array(str(source), mode="w", shape=SHAPE, chunks=(128, 128), dtype=image.dtype)[:] = image
    out = folder / "slide.zarr"
    result = segment_large(str(source), out, block=128, halo=64, workers=1, processes=False, device="cpu")
    assert result.n_cells > 20
    return out, image, source


def layers_by_type(layers):
    return {kind: (data, meta) for data, meta, kind in layers}


def with_source(slide, tmp_path, source) -> str:
    """A copy of the output whose record names ``source`` as its image."""
    out = tmp_path / "copy.zarr"
    shutil.copytree(slide[0], out)
    attrs = json.loads((out / ".zattrs").read_text())
    attrs["napari_cellseg"]["source"] = str(source)
    (out / ".zattrs").write_text(json.dumps(attrs))
    return str(out)


def test_labels_are_a_lazy_multiscale_layer(slide):
    out, image, _ = slide
    reader = napari_get_reader(str(out))
    assert reader is not None
    layers = layers_by_type(reader(str(out)))
    assert set(layers) == {"image", "labels"}
    levels, meta = layers["labels"]
    assert meta["multiscale"] is True and meta["name"] == "slide"
    assert len(levels) == 3
    assert all(isinstance(level, da.Array) for level in levels)
    np.testing.assert_array_equal(levels[0].compute(), zarr.open_array(str(out / "0"), mode="r")[:])
    assert [level.shape for level in levels] == [(300, 260), (150, 130), (75, 65)]
    np.testing.assert_array_equal(levels[1].compute(), levels[0].compute()[::2, ::2])
    record = json.loads((out / ".zattrs").read_text())["napari_cellseg"]
    px = record["pixel_size"]
    assert meta["scale"] == [px, px] and meta.get("translate", [0.0, 0.0]) == [0.0, 0.0]
    # The coarse levels keep every 2**k-th pixel: no offset in the OME-Zarr metadata.
    datasets = json.loads((out / ".zattrs").read_text())["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"] for d in datasets] == [
        [{"type": "scale", "scale": [px * 2**k, px * 2**k]}] for k in range(3)]
    assert meta["metadata"][TABLE_KEY] == str(out / "cells.csv")
    assert meta["metadata"]["complete"] is True
    # The image: the recorded source, lazy, on the labels' grid.
    data, image_meta = layers["image"]
    assert isinstance(data, da.Array)
    np.testing.assert_array_equal(data.compute(), image)
    assert image_meta["scale"] == [px, px] and image_meta["name"] == "slide_image.zarr"


def test_a_missing_source_gives_the_labels_alone(slide, tmp_path):
    out = with_source(slide, tmp_path, tmp_path / "moved_away.zarr")
    layers = napari_get_reader(out)(out)
    assert [kind for *_, kind in layers] == ["labels"]


def test_a_tiff_source_is_read_lazily(slide, tmp_path):
    import tifffile

    tif = tmp_path / "slide.tif"
    tifffile.imwrite(tif, slide[1], tile=(64, 64))
    out = with_source(slide, tmp_path, tif)
    data, meta = layers_by_type(napari_get_reader(out)(out))["image"]
    assert isinstance(data, da.Array) and meta["name"] == "slide.tif"
    np.testing.assert_array_equal(data.compute(), slide[1])
    # A source that is no longer the segmented image (another shape) is left out.
    tifffile.imwrite(tif, slide[1][:100])
    assert [kind for *_, kind in napari_get_reader(out)(out)] == ["labels"]


def test_an_ome_zarr_source_is_a_multiscale_image(slide, tmp_path):
    image = slide[1]
    ome = tmp_path / "slide.ome.zarr"  # (c, y, x) with one channel, two levels
    group = zarr.open_group(str(ome), mode="w")
    for k, level in enumerate([image, image[::2, ::2]]):
        zarr.open_array(str(ome / str(k)), mode="w", shape=(1, *level.shape), chunks=(1, 64, 64),
                        dtype=level.dtype)[:] = level[None]
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}]}]
    out = with_source(slide, tmp_path, ome)
    data, meta = layers_by_type(napari_get_reader(out)(out))["image"]
    assert meta["multiscale"] is True and [d.shape for d in data] == [SHAPE, (150, 130)]
    assert all(isinstance(d, da.Array) for d in data)
    np.testing.assert_array_equal(data[1].compute(), image[::2, ::2])


def test_a_single_level_output_is_a_plain_lazy_layer(slide, tmp_path):
    out = with_source(slide, tmp_path, slide[2])
    attrs = json.loads((tmp_path / "copy.zarr" / ".zattrs").read_text())
    del attrs["multiscales"][0]["datasets"][1:]  # as written for an image of one block
    (tmp_path / "copy.zarr" / ".zattrs").write_text(json.dumps(attrs))
    data, meta = layers_by_type(napari_get_reader(out)(out))["labels"]
    assert isinstance(data, da.Array) and data.shape == SHAPE and meta["multiscale"] is False
    from napari.layers import Labels

    assert Labels(data, **{k: v for k, v in meta.items() if k != "name"}).data is data


def test_paths_that_are_not_ours_get_none(slide, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    text = tmp_path / "image.zarr"  # a file, not a folder, whatever its name
    text.write_text("not a zarr")
    other = tmp_path / "other.zarr"  # a zarr group, but not a segment_large output
    group = zarr.open_group(str(other), mode="w")
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}]}]
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / ".zattrs").write_text("{ not json")
    listed = tmp_path / "listed.zarr"  # valid JSON that is not zarr's: get_reader raised
    listed.mkdir()
    (listed / "zarr.json").write_text("[1]")
    for path in [folder, folder / "notes.txt", text, other, broken, listed, tmp_path / "nowhere.zarr"]:
        assert napari_get_reader(str(path)) is None, path
    assert napari_get_reader([str(slide[0]), str(slide[0])]) is None  # a stack: not ours
    assert napari_get_reader([str(slide[0])]) is not None


def test_importing_the_reader_loads_neither_dask_nor_zarr(tmp_path):
    code = ("import sys; from napari_cellseg._reader import napari_get_reader; "
            f"assert napari_get_reader({str(tmp_path)!r}) is None; "
            "print(sorted(m for m in ('dask', 'zarr', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.gui
def test_viewer_opens_the_output_as_multiscale_labels(make_napari_viewer, slide):
    out = slide[0]
    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="napari-cellseg")
    labels = viewer.layers["slide"]
    assert labels._type_string == "labels"
    assert labels.multiscale is True and len(labels.data) == 3
    assert all(isinstance(level, da.Array) for level in labels.data)
    px = json.loads((out / ".zattrs").read_text())["napari_cellseg"]["pixel_size"]
    np.testing.assert_allclose(labels.scale, [px, px])
    assert labels.metadata[TABLE_KEY] == str(out / "cells.csv")
    assert viewer.layers["slide_image.zarr"]._type_string == "image"
