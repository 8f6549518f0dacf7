"""A pixel size stated in an image file's metadata is used when none is given (issue 15)."""

import json
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellseg import cli, io
from napari_cellseg.core import synthetic as syn

LESSON = syn.make_image()[0].astype(np.float32)  # eight cells for the classic method
SMALL = np.zeros((32, 32), np.uint16)


def _ome(path, image=SMALL, **sizes):
    tifffile.imwrite(path, image, ome=True, metadata=sizes)
    return path


# ---- io.read_pixel_size --------------------------------------------------------------

def test_ome_physical_size_in_micrometres(tmp_path):
    path = _ome(tmp_path / "a.ome.tif", PhysicalSizeX=0.325, PhysicalSizeY=0.325)
    assert io.read_pixel_size(path) == pytest.approx(0.325)


def test_ome_physical_size_in_nanometres_converts(tmp_path):
    path = _ome(tmp_path / "a.ome.tif", PhysicalSizeX=325, PhysicalSizeXUnit="nm",
                PhysicalSizeY=325, PhysicalSizeYUnit="nm")
    assert io.read_pixel_size(path) == pytest.approx(0.325)
    path = _ome(tmp_path / "b.ome.tif", PhysicalSizeX=3250, PhysicalSizeXUnit="Å",
                PhysicalSizeY=0.000325, PhysicalSizeYUnit="mm")
    assert io.read_pixel_size(path) == pytest.approx(0.325)


@pytest.mark.parametrize("unit", ["micron", "um", "\\u00B5m"])  # ImageJ writes ASCII
def test_imagej_unit_and_resolution(tmp_path, unit):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, SMALL, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"unit": unit})
    assert io.read_pixel_size(path) == 0.65  # exactly: the rational 20/13 reads back as 0.65


def test_imagej_in_nanometres(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, SMALL, imagej=True, resolution=(1 / 650, 1 / 650), metadata={"unit": "nm"})
    assert io.read_pixel_size(path) == pytest.approx(0.65)


def test_plain_tiff_resolution_in_centimetres_and_inches(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, SMALL, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert io.read_pixel_size(path) == 0.5
    path = tmp_path / "inch.tif"
    tifffile.imwrite(path, SMALL, resolution=(25400 / 0.4, 25400 / 0.4), resolutionunit="INCH")
    assert io.read_pixel_size(path) == pytest.approx(0.4)


@pytest.mark.parametrize(("resolution", "unit"), [
    (None, None),                 # no resolution at all
    ((1, 1), "NONE"),             # an aspect ratio only
    ((1e4, 1e4), "NONE"),         # a number, but no unit to read it in
    ((1, 1), "INCH"),             # the TIFF default many writers leave
    ((72, 72), "INCH"),           # screen / image-editor defaults: not a microscope's
    ((96, 96), "INCH"),
])
def test_no_pixel_size_in_the_file(tmp_path, resolution, unit):
    path = tmp_path / "plain.tif"
    kwargs = {} if resolution is None else {"resolution": resolution, "resolutionunit": unit}
    tifffile.imwrite(path, SMALL, **kwargs)
    assert io.read_pixel_size(path) is None


@pytest.mark.parametrize(("resolution", "unit", "um"), [
    ((300, 300), "INCH", "84.6667"),     # an image editor's print setting
    ((72, 72), "CENTIMETER", "138.889"),  # 72 "dpi" written per cm
    ((1e9, 1e9), "CENTIMETER", "1e-05"),  # 0.01 nm: no light microscope
])
def test_an_implausible_plain_resolution_is_ignored_with_a_warning(tmp_path, caplog, resolution, unit, um):
    """A plain TIFF resolution that no microscope gives is not taken as the pixel size: at
    300 dpi every area_um2 would be ~10^4 times too large, with nothing else to check it."""
    path = tmp_path / "editor.tif"
    tifffile.imwrite(path, SMALL, resolution=resolution, resolutionunit=unit)
    with caplog.at_level("WARNING"):
        assert io.read_pixel_size(path) is None
    assert f"means {um} µm per pixel" in caplog.text and "ignored" in caplog.text


@pytest.mark.parametrize(("resolution", "unit", "um"), [
    (72, "inch", "352.778"),  # what ImageJ stores for a screenshot or a JPEG it opened
    (2, "cm", "5000"),
    (1e6, "um", "1e-06"),
])
def test_an_implausible_imagej_or_ome_size_is_ignored_with_a_warning(tmp_path, caplog, resolution, unit, um):
    """Named units were taken as written: 352.778 µm per pixel from ImageJ's 72 pixels per
    inch, every area_um2 ~10^5 times too large, exit status 0."""
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, SMALL, imagej=True, resolution=(resolution, resolution), metadata={"unit": unit})
    with caplog.at_level("WARNING"):
        assert io.read_pixel_size(path) is None
    assert f"ImageJ metadata states {um} µm per pixel" in caplog.text and "ignored" in caplog.text
    path = _ome(tmp_path / "far.ome.tif", PhysicalSizeX=25.0, PhysicalSizeY=25.0)
    assert io.read_pixel_size(path) is None
    assert "OME metadata states 25 µm per pixel" in caplog.text


def test_imagej_plural_units_are_read_and_unknown_ones_said(tmp_path, caplog):
    path = tmp_path / "ij.tif"
    for unit, given in (("micrometers", 0.65), ("nanometers", 650), ("microns", 0.65)):
        tifffile.imwrite(path, SMALL, imagej=True, resolution=(1 / given, 1 / given), metadata={"unit": unit})
        assert io.read_pixel_size(path) == pytest.approx(0.65), unit
    tifffile.imwrite(path, SMALL, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "furlong"})
    with caplog.at_level("WARNING"):
        assert io.read_pixel_size(path) is None
    assert "ImageJ unit 'furlong' is not a length" in caplog.text
    caplog.clear()
    tifffile.imwrite(path, SMALL, imagej=True, resolution=(1.0, 1.0), metadata={"unit": "pixel"})
    with caplog.at_level("WARNING"):
        assert io.read_pixel_size(path) is None
    assert caplog.text == ""  # uncalibrated: nothing to say


def test_png_has_none(tmp_path):
    path = tmp_path / "a.png"
    iio.imwrite(path, SMALL.astype(np.uint8))
    assert io.read_pixel_size(path) is None


def test_non_square_pixels_are_refused_naming_both(tmp_path):
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(path, SMALL, resolution=(1e4 / 0.5, 1e4 / 0.6), resolutionunit="CENTIMETER")
    with pytest.raises(ValueError, match=r"0\.5 µm in X, 0\.6 µm in Y") as info:
        io.read_pixel_size(path)
    assert "square" in str(info.value) and str(path) in str(info.value)
    path = _ome(tmp_path / "aniso.ome.tif", PhysicalSizeX=0.325, PhysicalSizeY=0.65)
    with pytest.raises(ValueError, match=r"0\.325 µm in X, 0\.65 µm in Y"):
        io.read_pixel_size(path)
    # Within 1 %: square enough, the X size.
    path = _ome(tmp_path / "near.ome.tif", PhysicalSizeX=0.325, PhysicalSizeY=0.3265)
    assert io.read_pixel_size(path) == pytest.approx(0.325)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tif"):
        io.read_pixel_size(tmp_path / "nope.tif")


def test_non_positive_sizes_are_ignored_with_a_warning(tmp_path, caplog):
    path = _ome(tmp_path / "neg.ome.tif", PhysicalSizeX=-1, PhysicalSizeY=-1)
    with caplog.at_level("WARNING", logger="napari_cellseg"):
        assert io.read_pixel_size(path) is None
    assert "not a finite number > 0" in caplog.text
    caplog.clear()
    path = tmp_path / "zero.tif"
    tifffile.imwrite(path, SMALL, resolution=((0, 1), (0, 1)), resolutionunit="CENTIMETER")
    with caplog.at_level("WARNING", logger="napari_cellseg"):
        assert io.read_pixel_size(path) is None
    assert "not a finite number > 0" in caplog.text


def test_garbage_tiff_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="cannot read"):
        io.read_pixel_size(path)


# ---- the segment command and the batch ----------------------------------------------

def _record(folder, stem):
    return json.loads((folder / f"{stem}_params.json").read_text())


def test_cli_classic_uses_the_files_pixel_size_unless_one_is_given(tmp_path, caplog):
    image = _ome(tmp_path / "lesson.tif", LESSON, PhysicalSizeX=0.325, PhysicalSizeY=0.325)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, LESSON)
    with caplog.at_level("INFO", logger="napari_cellseg"):
        assert cli.main(["segment", str(image), str(plain), "--out", str(tmp_path / "a"),
                         "--method", "classic"]) == 0
    assert caplog.text.count("from the file's metadata") == 1  # one line, for lesson.tif only
    assert "lesson.tif: pixel size 0.325 µm" in caplog.text
    record = _record(tmp_path / "a", "lesson")
    assert record["pixel_size_um"] == 0.325
    assert record["pixel_size_from"] == "file metadata"
    assert record["pixel_size_given"] is False
    assert record["cells"] == 8
    table = pd.read_csv(tmp_path / "a" / "lesson_cells.csv")
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.325**2)
    # The plain TIFF states none: as before, no pixel size and no source.
    record = _record(tmp_path / "a", "plain")
    assert record["pixel_size_um"] is None and "pixel_size_from" not in record
    # An explicit --pixel-size wins.
    assert cli.main(["segment", str(image), "--out", str(tmp_path / "b"), "--method", "classic",
                     "--pixel-size", "0.4"]) == 0
    record = _record(tmp_path / "b", "lesson")
    assert record["pixel_size_um"] == 0.4 and record["pixel_size_given"] is True
    assert "pixel_size_from" not in record
    # --pixel-size 0 means unknown, as in the widgets: the file's own (it had given none).
    assert cli.main(["segment", str(image), "--out", str(tmp_path / "z"), "--method", "classic",
                     "--pixel-size", "0"]) == 0
    record = _record(tmp_path / "z", "lesson")
    assert record["pixel_size_um"] == 0.325 and record["pixel_size_from"] == "file metadata"
    # The labels do not depend on it: the classic method works in pixels.
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / "lesson_masks.tif"),
                                  tifffile.imread(tmp_path / "b" / "lesson_masks.tif"))


def test_cli_unet_rescales_by_the_files_pixel_size(tmp_path, capsys):
    s = syn.make_whole_cell_image(seed=3, shape=(96, 96), cell_radius=7.5, density=0.8, stain="membrane")
    image = tmp_path / "t.tif"
    tifffile.imwrite(image, s.image.astype(np.float32), imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"unit": "micron"})
    assert cli.main(["segment", str(image), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    record = _record(tmp_path / "a", "t")
    assert record["pixel_size_um"] == 0.4 and record["pixel_size_from"] == "file metadata"
    assert record["pixel_size_given"] is False
    # The cells are those of 0.4 µm, not only the record (they differ from 0.5 µm's here).
    import napari_cellseg as ncs

    written = tifffile.imread(tmp_path / "a" / "t_masks.tif")
    np.testing.assert_array_equal(written, ncs.segment(s.image.astype(np.float32), 0.4, device="cpu"))
    assert not np.array_equal(written, ncs.segment(s.image.astype(np.float32), 0.5, device="cpu"))
    # A size the model cannot take says it came from the file, and how to override it.
    far = tmp_path / "far.tif"
    tifffile.imwrite(far, s.image.astype(np.float32), resolution=(1e4 / 10, 1e4 / 10),
                     resolutionunit="CENTIMETER")
    assert cli.main(["segment", str(far), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "10 µm its file's metadata states" in err and "--pixel-size" in err
    assert not (tmp_path / "b" / "far_masks.tif").exists()


def test_a_cell_diameter_sets_the_zoom_and_the_files_pixel_size_the_um(tmp_path):
    """Large cells in a calibrated file: the cell diameter rescales them to the model's
    size, while µm² are still measured with the file's 0.65 µm, not the 0.25 µm implied
    by taking the cells to be the model's 7.5 µm cells."""
    from napari_cellseg.core.preprocess import rescale
    from napari_cellseg.model.store import resolve_model
    from napari_cellseg.sample_data import tissue_scene

    big = rescale(tissue_scene().image[:160, :160].astype(np.float32), 2.0)  # cells ~30 px
    calibrated, plain = tmp_path / "calibrated.tif", tmp_path / "plain.tif"
    tifffile.imwrite(calibrated, big, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "micron"})
    tifffile.imwrite(plain, big)
    assert cli.main(["segment", str(calibrated), str(plain), "--out", str(tmp_path / "a"),
                     "--cell-diameter", "30", "--device", "cpu"]) == 0
    record = _record(tmp_path / "a", "calibrated")
    assert record["pixel_size_um"] == 0.65 and record["pixel_size_from"] == "file metadata"
    assert record["scale_from"] == "cell diameter 30.0 px"
    implied = resolve_model(None)[1].cell_diameter_um / 30  # 0.25 µm for the model's 7.5 µm cells
    assert record["scale_pixel_size_um"] == pytest.approx(implied)
    table = pd.read_csv(tmp_path / "a" / "calibrated_cells.csv")
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.65**2)
    # The same zoom either way: the file's size changes the µm, not the cells.
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / "calibrated_masks.tif"),
                                  tifffile.imread(tmp_path / "a" / "plain_masks.tif"))
    assert record["cells"] > 20
    # Without a calibration, µm use the implied size, and the record says where it came from.
    record = _record(tmp_path / "a", "plain")
    assert record["pixel_size_um"] == pytest.approx(implied)
    assert record["pixel_size_from"] == "cell diameter 30.0 px" and "scale_from" not in record


def test_a_cell_diameter_in_um_goes_through_each_images_pixel_size(tmp_path, capsys):
    """Cells 19.5 µm across in 0.65 µm pixels are 30 px: "--cell-diameter 19.5um" gives the
    cells of "--cell-diameter 30", from the file's pixel size or one given, and that pixel
    size measures the µm. A file without one is refused before any work, in words."""
    from napari_cellseg.core.preprocess import rescale
    from napari_cellseg.sample_data import tissue_scene

    big = rescale(tissue_scene().image[:160, :160].astype(np.float32), 2.0)  # cells ~30 px
    calibrated, plain = tmp_path / "calibrated.tif", tmp_path / "plain.tif"
    tifffile.imwrite(calibrated, big, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "micron"})
    tifffile.imwrite(plain, big)
    assert cli.main(["segment", str(plain), "--out", str(tmp_path / "px"), "--cell-diameter", "30px",
                     "--device", "cpu"]) == 0
    by_px = tifffile.imread(tmp_path / "px" / "plain_masks.tif")
    assert by_px.max() > 20
    assert cli.main(["segment", str(calibrated), "--out", str(tmp_path / "um"), "--cell-diameter", "19.5um",
                     "--device", "cpu"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "um" / "calibrated_masks.tif"), by_px)
    record = _record(tmp_path / "um", "calibrated")
    assert record["pixel_size_um"] == 0.65 and record["pixel_size_from"] == "file metadata"
    assert record["scale_from"] == "cell diameter 19.5 µm (30 px)"
    table = pd.read_csv(tmp_path / "um" / "calibrated_cells.csv")
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.65**2)
    # A pixel size given instead of the file's: the same cells, and it measures the µm.
    assert cli.main(["segment", str(plain), "--out", str(tmp_path / "given"), "--pixel-size", "0.65",
                     "--cell-diameter", "19.5 µm", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "given" / "plain_masks.tif"), by_px)
    record = _record(tmp_path / "given", "plain")
    assert record["pixel_size_um"] == 0.65 and record["pixel_size_from"] == "given"
    capsys.readouterr()
    # No pixel size anywhere: refused before any image is segmented.
    assert cli.main(["segment", str(calibrated), str(plain), "--out", str(tmp_path / "none"),
                     "--cell-diameter", "19.5um", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "needs each image's pixel size" in err and "plain.tif" in err and "calibrated.tif" not in err
    assert not (tmp_path / "none" / "calibrated_masks.tif").exists()
    for args, phrase in ((["--cell-diameter", "19.5um", "--pixel-size", "auto"], "not --pixel-size auto"),
                         (["--cell-diameter", "30", "--pixel-size", "0.65"], "in px goes without"),
                         (["--cell-diameter", "0um"], "--cell-diameter must be a finite number of µm")):
        assert cli.main(["segment", str(plain), "--out", str(tmp_path / "bad"), *args]) == 2
        assert phrase in capsys.readouterr().err, args
    from napari_cellseg.batch import iter_segment_files
    from napari_cellseg.progress import drain

    for kwargs, phrase in (({"method": "classic", "cell_diameter_um": 19.5, "pixel_size": 0.65}, "classic"),
                           ({"method": "classic", "cell_diameter_px": 30}, "classic"),
                           ({"cell_diameter_px": 30, "pixel_size": 0.65}, "in px goes without a pixel size")):
        with pytest.raises(ValueError, match=phrase):  # the API refuses what the CLI does
            drain(iter_segment_files([plain], tmp_path / "bad", **kwargs))
    with pytest.raises(SystemExit):  # argparse's usage error, in words
        cli.main(["segment", str(plain), "--out", str(tmp_path / "bad"), "--cell-diameter", "thirty"])
    assert "e.g. 30, 30px or 12um; got 'thirty'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_batch_refuses_non_square_pixels_before_any_work(tmp_path):
    from napari_cellseg.batch import iter_segment_files
    from napari_cellseg.progress import drain

    first = tmp_path / "first.tif"
    tifffile.imwrite(first, LESSON)
    aniso = tmp_path / "aniso.tif"
    tifffile.imwrite(aniso, LESSON, resolution=(1e4 / 0.5, 1e4 / 0.6), resolutionunit="CENTIMETER")
    with pytest.raises(ValueError, match=r"0\.5 µm in X, 0\.6 µm in Y"):
        drain(iter_segment_files([first, aniso], tmp_path / "out", "classic"))
    assert not (tmp_path / "out").exists()  # refused before the output folder was made
    # A size given is used as it is: the file's metadata is not read.
    results = drain(iter_segment_files([first, aniso], tmp_path / "out", "classic", pixel_size=0.5))
    assert [n for _, n in results] == [8, 8]
    assert _record(tmp_path / "out", "aniso")["pixel_size_um"] == 0.5


# ---- the widgets' pixel size of a layer ----------------------------------------------

def _layer(path=None, scale=(1.0, 1.0), metadata=None):
    """What pixel_size_of reads of a napari layer: metadata, scale, source.path."""
    return SimpleNamespace(metadata=metadata or {}, scale=scale,
                           source=SimpleNamespace(path=None if path is None else str(path)))


def test_pixel_size_of_a_layer_reads_its_tiff(tmp_path, caplog):
    from napari_cellseg._widgets._layers import pixel_size_of

    image = _ome(tmp_path / "a.tif", PhysicalSizeX=0.325, PhysicalSizeY=0.325)
    assert pixel_size_of(_layer(image)) == pytest.approx(0.325)
    # The layer's own metadata and a scale set in napari come first.
    assert pixel_size_of(_layer(image, metadata={"pixel_size_um": 0.7})) == 0.7
    assert pixel_size_of(_layer(image, scale=(0.2, 0.2))) == 0.2
    # No file, a PNG, a TIFF without one: unknown.
    assert pixel_size_of(_layer()) is None
    png = tmp_path / "a.png"
    iio.imwrite(png, SMALL.astype(np.uint8))
    assert pixel_size_of(_layer(png)) is None
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, SMALL)
    assert pixel_size_of(_layer(plain)) is None
    # A file gone since, or non-square pixels: logged, and the widget goes on.
    aniso = tmp_path / "aniso.tif"
    tifffile.imwrite(aniso, SMALL, resolution=(1e4 / 0.5, 1e4 / 0.6), resolutionunit="CENTIMETER")
    with caplog.at_level("WARNING", logger="napari_cellseg"):
        assert pixel_size_of(_layer(tmp_path / "gone.tif")) is None
        assert pixel_size_of(_layer(aniso)) is None
    assert "gone.tif" in caplog.text and "not square" in caplog.text
