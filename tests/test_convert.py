"""TIFF -> OME-Zarr conversion (workflows/convert.py, ``napari-cellseg convert``): pixels
kept exactly, the pyramid averaged by hand-checkable 2 x 2 means, the pixel size from the
TIFF, the live RGB channel, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr")

from napari_cellseg.workflows.convert import convert_to_zarr  # noqa: E402


@pytest.fixture
def striped(tmp_path):
    """A 700 x 650 uint16 TIFF in strips of 64 rows, 0.325 µm/px in its ImageJ metadata."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(700, 650), dtype=np.uint16)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, imagej=True, rowsperstrip=64, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"unit": "um"})
    return path, image


def test_convert_keeps_pixels_builds_the_pyramid_and_the_pixel_size(striped, tmp_path):
    path, image = striped
    steps = []
    out = tmp_path / "slide.ome.zarr"
    result = convert_to_zarr(path, out, chunk=128, progress=steps.append)
    root = zarr.open_group(str(out), mode="r")
    level0 = root["0"][:]
    assert level0.dtype == np.uint16
    np.testing.assert_array_equal(level0, image)
    assert root["0"].chunks == (128, 128)
    # halved until the coarsest level is at most 512 px: 700, then 350
    assert result.levels == 2 and result.shape == (700, 650)
    level1 = root["1"][:]
    assert level1.shape == (350, 325)
    assert level1[3, 5] == pytest.approx(image[6:8, 10:12].mean())
    ms = root.attrs["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == pytest.approx([0.65, 0.65])
    assert result.pixel_size == pytest.approx(0.325)
    assert steps[-1].done == steps[-1].total and steps[0].done == 0
    # The block-wise reader opens it at full resolution.
    from napari_cellseg.workflows.large import _read_path

    np.testing.assert_array_equal(np.asarray(_read_path(out)[:]), image)
    assert not list(tmp_path.glob(".*partial"))


def test_convert_keeps_the_live_channel_of_rgb_and_refuses_clearly(tmp_path):
    rgb = np.zeros((300, 280, 3), np.uint8)
    rgb[..., 1] = np.random.default_rng(1).integers(0, 255, size=(300, 280))
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=32)
    out = tmp_path / "rgb.zarr"
    result = convert_to_zarr(path, out, chunk=64)
    assert result.channel == 1 and result.pixel_size is None
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], rgb[..., 1])
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_to_zarr(path, out, chunk=64)
    assert convert_to_zarr(path, out, chunk=64, channel=0, overwrite=True).channel == 0
    # A refused conversion leaves the existing output as it was; the slide is never the output.
    with pytest.raises(ValueError, match="has 3 channels"):
        convert_to_zarr(path, out, chunk=64, channel=5, overwrite=True)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], rgb[..., 0])
    with pytest.raises(ValueError, match="would replace the slide"):
        convert_to_zarr(path, path, chunk=64, overwrite=True)
    assert path.is_file()
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="not a 2-D slide"):
        convert_to_zarr(stack, tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="multiple of 32"):
        convert_to_zarr(path, tmp_path / "c.zarr", chunk=100)
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "c.zarr").exists()


def test_cli_convert(striped, tmp_path, capsys):
    from napari_cellseg.cli import main

    path, _ = striped
    out = tmp_path / "o.zarr"
    assert main(["convert", str(path), "--out", str(out), "--chunk", "256"]) == 0
    assert "700 x 650 uint16, 2 levels, 0.325 µm/px" in capsys.readouterr().out
    assert main(["convert", str(path), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "m.zarr")]) == 2
    assert "no such file" in capsys.readouterr().err
