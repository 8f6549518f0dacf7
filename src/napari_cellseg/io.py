"""Reading images and labels, writing labels and tables without silent overwrites."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
LABEL_TAGS = ("_masks", "_mask", "_labels")  # a file name ending so (before the extension) holds labels


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise IsADirectoryError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {path}: the file is empty (0 bytes)")


def _unreadable(path: Path, err: Exception) -> ValueError:
    """A reader's error re-worded with the file name: the readers' own words vary."""
    words = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "plugin" in words.lower() or "backend" in words.lower():
        # imageio's "no plugin can read this" advice (install a video plugin ...) misleads
        words = "not a TIFF, PNG, JPEG or BMP image that can be decoded (corrupt or another format)"
    return ValueError(f"cannot read {path} as an image: {words}")


def _read_raw(path: Path) -> np.ndarray:
    return _read_with_axes(path)[0]


# What a TIFF's first axis holds when _read_with_axes moved it last: the samples of a
# planar 8-bit RGB(A) image (the 4th is alpha), or an ImageJ composite's channels (CYX: a
# 4th is a real channel).
SAMPLES, CHANNELS = "samples", "channels"


def _read_with_axes(path: Path) -> tuple[np.ndarray, str | None]:
    """The file's pixels, and what their last axis holds when a TIFF stored colours first
    (:data:`SAMPLES` for planar 8-bit RGB, :data:`CHANNELS` for an ImageJ composite CYX:
    moved last here, where they were taken for a stack of 2-4 planes), else None.

    Planar samples of other types stay a stack: tifffile writes any (3, M, N) or
    (4, M, N) array so by default, and such a file is far more often a z-stack or a
    time-lapse of 3-4 planes than an RGB image of 16-bit or float samples."""
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array, axes = np.asarray(series.asarray()), series.axes
            if len(axes) == array.ndim:
                kept = [(a, i) for i, (a, n) in enumerate(zip(axes, array.shape, strict=True)) if n > 1]
                names = "".join(a for a, _ in kept)
                if len(names) == 3 and names[1:] == "YX" and 2 <= array.shape[kept[0][1]] <= 4:
                    if names[0] == "C":
                        return np.moveaxis(array.squeeze(), 0, -1), CHANNELS
                    if names[0] == "S" and array.dtype == np.uint8:
                        return np.moveaxis(array.squeeze(), 0, -1), SAMPLES
            return array, None
        import imageio.v3 as iio

        return np.asarray(iio.imread(path)), None
    except Exception as err:
        raise _unreadable(path, err) from err


# µm in one unit, for the length names OME-XML and ImageJ write (lower case; "µ" is the
# micro sign: the Greek mu and ImageJ's escaped "\u00B5" are mapped to it first).
UM_PER_UNIT = {
    "m": 1e6, "meter": 1e6, "metre": 1e6, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0,
    "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3,
    "nanometre": 1e-3, "pm": 1e-6, "å": 1e-4, "angstrom": 1e-4, "in": 25400.0, "inch": 25400.0,
}
# Plurals as ImageJ users type them ("micrometers" was read as no unit, silently).
UM_PER_UNIT.update({"meters": 1e6, "metres": 1e6, "centimeters": 1e4, "centimetres": 1e4, "millimeters": 1e3,
                    "millimetres": 1e3, "micrometers": 1.0, "micrometres": 1.0, "nanometers": 1e-3,
                    "nanometres": 1e-3, "angstroms": 1e-4, "inches": 25400.0})
NOT_A_LENGTH = ("", "pixel", "pixels", "px")  # ImageJ's "uncalibrated"
# TIFF ResolutionUnit codes: 2 inch (the TIFF default), 3 centimetre; 4 and 5 (mm, µm) are
# tifffile's extension. 1 ("none") states an aspect ratio only.
UM_PER_RESOLUTION_UNIT = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}
# Pixels per inch that writers leave when they know nothing: the TIFF default of 1 and the
# 72 / 96 dpi of screens and image editors. At 72 dpi a pixel would be 353 µm: no microscope
# image means that, so these say "no pixel size", not a measured one.
PLACEHOLDER_PPI = (1.0, 72.0, 96.0)
# Metadata states a pixel size only when it is one a microscope gives: an image editor's
# 300 dpi reads as 85 µm per pixel, ImageJ's 72 pixels per inch of a screenshot as 353, and
# would make every area_um2 ~10^4 times too large where nothing else checks it (the classic
# method, a diameter in px). Outside this range a stated size (any source) is ignored, warned.
PLAUSIBLE_UM = (0.001, 20.0)
SQUARE_TOLERANCE = 0.01  # X and Y pixel sizes further apart than this (relative) are refused


def _um_per(unit) -> float | None:
    """µm in one ``unit`` (a length name as OME or ImageJ write it), None if not a length."""
    name = str(unit).strip().lower()
    for mu in ("\\u00b5", "\\u03bc", "\u03bc"):
        name = name.replace(mu, "µ")
    return UM_PER_UNIT.get(name)


def _per_unit(value) -> float:
    """A TIFF X/YResolution (a RATIONAL (numerator, denominator) or a number) as pixels
    per unit; nan where it is not a finite number > 0."""
    num, den = (float(v) for v in value[:2]) if isinstance(value, tuple | list) else (float(value), 1.0)
    ok = num > 0 and den > 0 and np.isfinite(num) and np.isfinite(den)
    return num / den if ok else np.nan


def _resolution(tif) -> tuple[float, float] | None:
    """The first page's X and Y resolution in pixels per unit (Y = X when only X is there)."""
    tags = tif.pages[0].tags
    if "XResolution" not in tags:
        return None
    x = _per_unit(tags["XResolution"].value)
    return x, (_per_unit(tags["YResolution"].value) if "YResolution" in tags else x)


def _um_per_pixel(um_per_unit: float, pixels_per_unit: float) -> float:
    # The rationals hold ~7 digits: 1 / 0.65 stored as 20 / 13 must read back as 0.65.
    size = um_per_unit / pixels_per_unit
    return float(f"{size:.6g}") if np.isfinite(size) else size


def _ome_size(tif) -> tuple[float, float] | None:
    """(X, Y) µm of the first image of an OME-TIFF (PhysicalSizeX/Y, unit µm by default)."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError as err:
        logger.warning("%s: OME-XML not readable (%s); its pixel size is ignored", tif.filename, err)
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = {}
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            continue
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        factor = _um_per(unit)
        if factor is None:  # "pixel", "reference frame": not a length
            logger.warning("%s: OME PhysicalSize%sUnit %r is not a length; its pixel size is "
                           "ignored", tif.filename, axis, unit)
            return None
        try:
            sizes[axis] = float(value) * factor
        except ValueError:
            sizes[axis] = np.nan
    if not sizes:
        return None
    return sizes.get("X", sizes.get("Y")), sizes.get("Y", sizes.get("X"))  # one given: square


def _imagej_size(tif) -> tuple[float, float] | None:
    """(X, Y) µm of an ImageJ TIFF: its ``unit``, and X/YResolution as pixels per unit."""
    meta = tif.imagej_metadata if tif.is_imagej else None
    factor = _um_per(meta.get("unit", "")) if meta else None
    if meta and factor is None and str(meta.get("unit", "")).strip().lower() not in NOT_A_LENGTH:
        logger.warning("%s: ImageJ unit %r is not a length napari-cellseg knows; its pixel size is "
                       "ignored: give it if you know it", tif.filename, meta.get("unit"))
    resolution = _resolution(tif)
    if factor is None or resolution is None:
        return None  # uncalibrated ("pixel" or no unit): a plain resolution may still say
    return tuple(_um_per_pixel(factor, r) for r in resolution)


def _resolution_size(tif) -> tuple[float, float] | None:
    """(X, Y) µm from plain TIFF X/YResolution with ResolutionUnit inch or centimetre."""
    tags = tif.pages[0].tags
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    factor = UM_PER_RESOLUTION_UNIT.get(unit)
    resolution = _resolution(tif)
    if factor is None or resolution is None:
        return None
    if unit == 2 and all(r in PLACEHOLDER_PPI for r in resolution):
        return None
    sizes = tuple(_um_per_pixel(factor, r) for r in resolution)
    lo, hi = PLAUSIBLE_UM
    if any(np.isfinite(v) and not lo <= v <= hi for v in sizes):
        unit_name = {2: "inch", 3: "cm", 4: "mm", 5: "µm"}[unit]
        logger.warning("%s: the TIFF resolution (%.6g pixels per %s) means %.6g µm per pixel, not "
                       "a microscope's (%g-%g µm): taken as an image editor's setting, and ignored; "
                       "give the pixel size if you know it", tif.filename, resolution[0], unit_name,
                       sizes[0], lo, hi)
        return None
    return sizes


def _square(path: Path, how: str, x: float, y: float) -> float | None:
    """The X pixel size when X and Y agree within 1 %; None (warned) when either is not a
    finite number > 0."""
    if not (np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0):
        logger.warning("%s: the %s pixel size %s x %s µm is not a finite number > 0; ignored",
                       path, how, x, y)
        return None
    if max(x, y) > min(x, y) * (1 + SQUARE_TOLERANCE):
        raise ValueError(f"{path}: pixels are not square: {x:g} µm in X, {y:g} µm in Y ({how} "
                         f"metadata) differ by more than {SQUARE_TOLERANCE:.0%}; segmentation "
                         "assumes square pixels: resample the image to square pixels, or give "
                         "one pixel size (CLI: --pixel-size)")
    return float(x)


def read_pixel_size(path: str | Path) -> float | None:
    """The pixel size in µm per pixel that an image file's metadata states, or None.

    Read with tifffile, the first found wins: OME-TIFF ``PhysicalSizeX/Y`` (with their
    units, µm by default), ImageJ's ``unit`` with X/YResolution as pixels per unit, plain
    TIFF X/YResolution in pixels per centimetre or inch. PNG, JPEG and BMP files, TIFFs
    without a resolution, with ResolutionUnit "none", with a writer's placeholder (1, 72
    or 96 pixels per inch) or stating a size outside 0.001-20 µm per pixel (an image
    editor's 300 dpi, ImageJ's 72 pixels per inch) give None, the latter warned. A value that is not a finite number > 0 is ignored
    with a logged warning.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not a readable TIFF, or its X and Y pixel sizes differ by more than
        1 % (segmentation assumes square pixels): the message names both.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None  # their resolution fields (PNG pHYs, JPEG dpi) describe screens, not optics
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError) as err:
        raise _unreadable(path, err) from err
    with tif:
        for how, read in (("OME", _ome_size), ("ImageJ", _imagej_size),
                          ("TIFF resolution", _resolution_size)):
            xy = read(tif)
            size = _plausible(path, how, None if xy is None else _square(path, how, *xy))
            if size is not None:
                return size
    return None


def _plausible(path, how: str, size: float | None) -> float | None:
    """``size`` when it is a pixel size a microscope gives (:data:`PLAUSIBLE_UM`), else
    None, warned (e.g. ImageJ's 72 pixels per inch: 353 µm)."""
    lo, hi = PLAUSIBLE_UM
    if size is not None and not lo <= size <= hi:
        logger.warning("%s: the %s metadata states %.6g µm per pixel, not a microscope's (%g-%g µm): "
                       "ignored; give the pixel size if you know it", path, how, size, lo, hi)
        return None
    return size


def _drop_singletons(array: np.ndarray) -> np.ndarray:
    """Drop leading singleton axes (1, 1, M, N) and a trailing one (M, N, 1), never the
    image's own rows or columns."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def is_rgb(array: np.ndarray) -> bool:
    """True for (M, N, 3) or (M, N, 4) arrays: colour, not a stack."""
    return array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4


def select_channel(array: np.ndarray, channel: int | None = None,
                   rgb: bool | None = None, alpha: bool = True) -> tuple[np.ndarray, int | None]:
    """One channel of an RGB(A) image: the one given, else the one that carries signal.

    Returns the 2-D (or stacked) single-channel array and the channel index used (None
    for an image that had one channel). The alpha channel is never chosen by itself.
    ``rgb``: whether the last axis holds colours (a napari layer says so, whatever its
    number of axes); by default guessed by :func:`is_rgb` (an (M, N, 3 or 4) array).
    ``alpha``: whether a 4th channel is alpha (RGBA), not a channel of its own (a composite's).
    """
    if not (is_rgb(array) if rgb is None else rgb):
        if channel not in (None, 0):
            raise ValueError(f"--channel {channel} given, but the image has one channel "
                             f"(shape {array.shape})")
        return array, None
    n = array.shape[-1]
    if channel is not None:
        if not 0 <= channel < n:
            raise ValueError(f"channel {channel} out of range for an image with {n} channels")
        return array[..., channel], channel
    colours = min(n, 3) if alpha else n  # RGBA's alpha is not a colour; a composite's channels all are
    colour = array[..., :colours].reshape(-1, colours).astype(np.float64)
    spread = colour.std(axis=0)
    chosen = int(np.argmax(spread))
    if np.count_nonzero(spread > 0.05 * spread.max()) > 1:
        # Several live channels: a true colour image; its luminance-like mean is fairest.
        logger.info("RGB image with several live channels: using their mean")
        return array[..., :colours].mean(axis=-1), None
    return array[..., chosen], chosen


def read_image(path: str | Path, channel: int | None = None) -> np.ndarray:
    """Read a 2-D image (TIFF, PNG, JPEG; 8/16-bit, float; grey or RGB) as float32.

    For an RGB image the channel that carries the signal is used (or ``channel``), and
    the choice is logged. A (Z, M, N) stack is returned as a stack.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not a readable image, or its shape is not 2-D / RGB / a stack.
    """
    path = Path(path)
    array, moved = _read_with_axes(path)
    array = _drop_singletons(array)
    if not moved and array.ndim == 3 and array.shape[-1] == 2 and path.suffix.lower() not in (".tif", ".tiff"):
        # A grey PNG with alpha (LA): the grey, not a stack of M planes of N x 2.
        if channel is None:
            logger.info("%s: grey with alpha: using the grey", path.name)
            array = array[..., 0]
        else:
            moved = SAMPLES
    single, used = select_channel(array, channel, rgb=True if moved else None, alpha=moved != CHANNELS)
    if used is not None:
        name = "RGBA"[used] if array.shape[-1] > 2 else str(used)
        logger.info("%s: %d channels, using channel %d (%s)", path.name, array.shape[-1], used, name)
    if single.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2-D image, an RGB image or a stack, "
                         f"got shape {array.shape}")
    if single.dtype == bool:
        single = single.astype(np.uint8)
    if not np.issubdtype(single.dtype, np.number) or np.iscomplexobj(single):
        raise ValueError(f"{path}: unsupported pixel type {single.dtype}")
    return single.astype(np.float32)


def read_labels(path: str | Path) -> np.ndarray:
    """Read an integer label image (0 = background, one id per object). RGB label images
    and binary masks are refused, saying why (:func:`~napari_cellseg.core.validate.label_image`)."""
    from .core import validate

    path = Path(path)
    array = _drop_singletons(_read_raw(path))
    array = validate.label_image(array, name=str(path), whole_floats=True, one_id_mask=True)
    return array.astype(np.int32 if array.size == 0 or array.max() < 2**31 else np.int64)


def check_can_write(path: str | Path, overwrite: bool = False) -> Path:
    """Raise FileExistsError when ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_can_write_all(paths, overwrite: bool = False) -> list[Path]:
    """Check every path before anything is written: raise one FileExistsError naming
    each one that exists (when ``overwrite`` is False), so a refusal writes nothing."""
    paths = [Path(p) for p in paths]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(f"nothing written: {', '.join(existing)} already {verb}; replace with "
                              "overwrite=True (CLI: --overwrite; Export and Batch widgets: "
                              "'Replace existing files') or choose another name")
    return paths


def result_paths(folder: str | Path, base: str, labels_format: str = ".tif") -> dict[str, Path]:
    """The files written for one segmented image: ``<base>_masks.tif`` (or .png),
    ``<base>_cells.csv`` and ``<base>_params.json``."""
    if labels_format not in (".tif", ".png"):
        raise ValueError(f"labels are written as '.tif' or '.png', not {labels_format!r}")
    folder = Path(folder)
    return {"labels": folder / f"{base}_masks{labels_format}", "table": folder / f"{base}_cells.csv",
            "params": folder / f"{base}_params.json"}


def write_results(
    folder: str | Path,
    base: str,
    labels: np.ndarray,
    image: np.ndarray | None = None,
    pixel_size: float | None = None,
    record: dict | None = None,
    labels_format: str = ".tif",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one segmentation's labels, cell table (CSV, intensities from ``image``) and
    ``record`` plus the number of cells (JSON), under the names of :func:`result_paths`.

    ``labels`` is 2-D, or a (planes, M, N) stack segmented plane by plane (each plane's
    ids its own): a stack is written as one multi-page TIFF, its table gets a ``plane``
    column (0-based, as napari's slider counts) with each plane measured on its own, and
    the record the cells per plane. Every target is checked before anything is written;
    an existing file is replaced only when ``overwrite`` is True. Returns the paths by
    kind ("labels", "table", "params").
    """
    import json

    import pandas as pd

    from .core.measure import cell_table

    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels of shape {labels.shape}: a 2-D image or a (planes, M, N) stack")
    if image is not None and np.shape(image) != labels.shape:
        raise ValueError(f"image {np.shape(image)} and labels {labels.shape} differ in shape")
    stack = labels.ndim == 3
    if stack and labels_format != ".tif":
        raise ValueError(f"a stack of {labels.shape[0]} planes is written as one multi-page .tif; "
                         f"a {labels_format} file holds one plane")
    paths = result_paths(folder, base, labels_format)
    check_can_write_all(paths.values(), overwrite)
    # The table checks the labels and the image before any file is written.
    if stack:
        table = pd.concat([cell_table(plane, None if image is None else image[i], pixel_size)
                           .assign(plane=i) for i, plane in enumerate(labels)], ignore_index=True)
        table = table[["plane", *table.columns.drop("plane")]]
    else:
        table = cell_table(labels, image, pixel_size)
    write_labels(paths["labels"], labels, overwrite=overwrite)
    table.to_csv(check_can_write(paths["table"], overwrite), index=False)
    record = {**(record or {}), "cells": len(table)}
    if stack:
        record["cells_per_plane"] = np.bincount(table["plane"].to_numpy(int), minlength=len(labels)).tolist()
    text = json.dumps(record, indent=2, default=_jsonable)
    check_can_write(paths["params"], overwrite).write_text(text)
    return paths


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def label_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 when it can, else uint32."""
    top = int(np.max(labels)) if np.size(labels) else 0
    if top < 2**16:
        return np.dtype(np.uint16)
    if top < 2**32:
        return np.dtype(np.uint32)
    raise ValueError(f"label id {top} does not fit in uint32")


def write_labels(path: str | Path, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write labels as TIFF (uint16/uint32, zlib) or 16-bit PNG, refusing to overwrite."""
    path = check_can_write(path, overwrite)
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)  # a mask: one object id, 1
    if labels.ndim >= 2:
        # Ids must be whole numbers >= 0: -1 cast to uint16 would be written as 65535 and
        # 1000.5 as 1000. The checks are 2-D; a stack is checked as one tall plane.
        from .core import validate

        labels = validate.label_image(labels.reshape(-1, labels.shape[-1]), f"labels for {path.name}",
                                      whole_floats=True).reshape(labels.shape)
    dtype = label_dtype(labels)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        # minisblack: a stack of 3 or 4 planes would otherwise be stored as one RGB(A) image.
        tifffile.imwrite(path, labels.astype(dtype), compression="zlib", photometric="minisblack")
    elif suffix == ".png":
        if dtype != np.uint16:
            raise ValueError(f"{path}: {int(labels.max())} labels do not fit a 16-bit PNG; use .tif")
        import imageio.v3 as iio

        iio.imwrite(path, labels.astype(np.uint16))
    else:
        raise ValueError(f"{path}: labels are written as .tif or .png, not {suffix!r}")
    return path


def pair_stem(path: str | Path) -> str:
    """File name without extension (``.ome.tif`` as one), without a trailing
    _masks/_mask/_labels, then without a trailing _img: ``x_img_masks.tif`` (what
    ``segment`` writes for ``x_img.png``), ``x_masks.tif`` and ``x.ome.tif`` all pair as x."""
    stem = _bare_stem(path)
    for tail in LABEL_TAGS:
        if stem.endswith(tail):
            stem = stem[: -len(tail)]
            break
    stem = stem[: -len("_img")] if stem.endswith("_img") else stem
    return _drop_ome(stem)  # x.ome_masks.tif, what segment writes for x.ome.tif


def is_label_file(path: str | Path) -> bool:
    """A file name that says it holds labels: ``_masks``, ``_mask`` or ``_labels`` before the
    extension (``.ome.tif`` counted as one: ``x_masks.ome.tif`` is a mask too)."""
    return _bare_stem(path).endswith(LABEL_TAGS)


def _bare_stem(path: str | Path) -> str:
    """The file name without its image extension, ``.ome.tif`` counted as one."""
    stem = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return _drop_ome(stem)


def _drop_ome(stem: str) -> str:
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem


def files_by_stem(files) -> dict[str, Path]:
    """``{pair_stem: path}``; two files of one stem (``x_masks.tif`` and ``x_labels.png``)
    are an error naming both, not one of them dropped unsaid."""
    out: dict[str, Path] = {}
    for path in files:
        stem = pair_stem(path)
        if stem in out:
            raise ValueError(f"{out[stem].name} and {Path(path).name} in {Path(path).parent} both pair as "
                             f"{stem!r}: keep one of them there")
        out[stem] = Path(path)
    return out


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def pair_files(images: str | Path, masks: str | Path) -> dict[str, tuple[Path, Path]]:
    """``{stem: (image file, mask file)}`` of :func:`load_pairs` (nothing read)."""
    if Path(images).resolve() == Path(masks).resolve():
        # One folder holding both: images are the files that are not masks.
        img_files = files_by_stem(p for p in list_images(images) if not is_label_file(p))
        mask_files = files_by_stem(p for p in list_images(masks) if is_label_file(p))
    else:
        img_files, mask_files = files_by_stem(list_images(images)), files_by_stem(list_images(masks))
    missing = sorted(set(img_files) ^ set(mask_files))
    if missing:
        raise ValueError(f"images and masks do not pair up; without a partner: {missing}")
    if not img_files:
        raise ValueError(f"no images found in {images}")
    return {stem: (img_files[stem], mask_files[stem]) for stem in sorted(img_files)}


def load_pairs(
    images: str | Path, masks: str | Path, channel: int | None = None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Image / mask pairs from two folders, matched by name (``x_img.png`` with
    ``x_masks.png``, ``x.tif`` with ``x_labels.tif`` ...): ``(stem, image, labels)``
    sorted by stem. A file without a partner is an error that names it."""
    return [(stem, read_image(image, channel), read_labels(mask))
            for stem, (image, mask) in pair_files(images, masks).items()]


def pairs_pixel_size(images: str | Path, masks: str | Path) -> float | None:
    """The pixel size (µm) the training images' files state, one for all of them; None
    when none states one. Sizes that differ by more than 1 %, or some files with a size
    and some without, are an error naming them: training takes one pixel size, and a
    model trained at the wrong one runs every image at the wrong zoom afterwards."""
    sizes = {stem: read_pixel_size(image) for stem, (image, _) in pair_files(images, masks).items()}
    known = {stem: v for stem, v in sizes.items() if v is not None}
    if not known:
        return None
    unknown = sorted(set(sizes) - set(known))
    if unknown:
        raise ValueError(f"some training images state a pixel size ({', '.join(f'{k}: {v:g} µm' for k, v in known.items())}) "
                         f"and some do not ({', '.join(unknown)}): give the pixel size (--pixel-size)")
    lo, hi = min(known.values()), max(known.values())
    if hi > lo * (1 + SQUARE_TOLERANCE):
        raise ValueError(f"the training images state different pixel sizes ({', '.join(f'{k}: {v:g} µm' for k, v in known.items())}): "
                         "training takes one; resample them to one pixel size, or train on one size at a time")
    return lo


MIN_FREE_BYTES = 50 * 2**20  # refuse to start writing results with less free space than this


def check_output_folder(folder: str | Path, min_free: int = MIN_FREE_BYTES) -> Path:
    """Create ``folder`` if needed and check, before any work, that files can be written
    there and that it has at least ``min_free`` bytes free (OSError naming the folder)."""
    import os
    import shutil
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"no permission to write in {folder}")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".napari-cellseg-write-test-"):
            pass
    except OSError as err:
        raise OSError(f"cannot write results to {folder}: {err.strerror or err}; choose another "
                      "output folder") from err
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise OSError(f"only {free / 2**20:.0f} MiB free in {folder} (at least "
                      f"{min_free / 2**20:.0f} MiB needed): free some space or choose another folder")
    return folder
