"""Reading images and labels, writing labels and tables without silent overwrites."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
LABEL_TAGS = ("_masks", "_mask", "_labels")  # a file name ending so (before the extension) holds labels
LABEL_SUFFIXES = (*LABEL_TAGS, "_img")  # removed to pair an image with its labels


def _read_raw(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise IsADirectoryError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {path}: the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as err:  # re-raised with the file name: the reader's own words vary
        words = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "plugin" in words.lower() or "backend" in words.lower():
            # imageio's "no plugin can read this" advice (install a video plugin ...) misleads
            words = "not a TIFF, PNG, JPEG or BMP image that can be decoded (corrupt or another format)"
        raise ValueError(f"cannot read {path} as an image: {words}") from err


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


def select_channel(array: np.ndarray, channel: int | None = None) -> tuple[np.ndarray, int | None]:
    """One channel of an RGB(A) image: the one given, else the one that carries signal.

    Returns the 2-D (or stacked) single-channel array and the channel index used (None
    for an image that had one channel). The alpha channel is never chosen by itself.
    """
    if not is_rgb(array):
        if channel not in (None, 0):
            raise ValueError(f"--channel {channel} given, but the image has one channel "
                             f"(shape {array.shape})")
        return array, None
    n = array.shape[-1]
    if channel is not None:
        if not 0 <= channel < n:
            raise ValueError(f"channel {channel} out of range for an image with {n} channels")
        return array[..., channel], channel
    colour = array[..., :3].reshape(-1, 3).astype(np.float64)
    spread = colour.std(axis=0)
    chosen = int(np.argmax(spread))
    if np.count_nonzero(spread > 0.05 * spread.max()) > 1:
        # Several live channels: a true colour image; its luminance-like mean is fairest.
        logger.info("RGB image with several live channels: using their mean")
        return array[..., :3].mean(axis=-1), None
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
    array = _read_raw(path)
    array = _drop_singletons(array)
    single, used = select_channel(array, channel)
    if used is not None:
        logger.info("%s: RGB image, using channel %d (%s)", path.name, used, "RGBA"[used])
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

    Every target is checked before anything is written; an existing file is replaced
    only when ``overwrite`` is True. Returns the paths by kind ("labels", "table", "params").
    """
    import json

    from .core.measure import cell_table

    labels = np.asarray(labels)
    if image is not None and np.shape(image) != labels.shape:
        raise ValueError(f"image {np.shape(image)} and labels {labels.shape} differ in shape")
    paths = result_paths(folder, base, labels_format)
    check_can_write_all(paths.values(), overwrite)
    write_labels(paths["labels"], labels, overwrite=overwrite)
    cell_table(labels, image, pixel_size).to_csv(check_can_write(paths["table"], overwrite), index=False)
    record = {**(record or {}), "cells": int(np.count_nonzero(np.unique(labels)))}
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
    dtype = label_dtype(labels)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, labels.astype(dtype), compression="zlib")
    elif suffix == ".png":
        if dtype != np.uint16:
            raise ValueError(f"{path}: {int(labels.max())} labels do not fit a 16-bit PNG; use .tif")
        import imageio.v3 as iio

        iio.imwrite(path, labels.astype(np.uint16))
    else:
        raise ValueError(f"{path}: labels are written as .tif or .png, not {suffix!r}")
    return path


def pair_stem(path: str | Path) -> str:
    """File name without extension and without a trailing _masks/_mask/_labels/_img."""
    stem = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for tail in LABEL_SUFFIXES:
        if stem.endswith(tail):
            return stem[: -len(tail)]
    return stem


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_pairs(
    images: str | Path, masks: str | Path, channel: int | None = None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Image / mask pairs from two folders, matched by name (``x_img.png`` with
    ``x_masks.png``, ``x.tif`` with ``x_labels.tif`` ...): ``(stem, image, labels)``
    sorted by stem. A file without a partner is an error that names it."""
    img_files = {pair_stem(p): p for p in list_images(images)}
    mask_files = {pair_stem(p): p for p in list_images(masks)}
    if Path(images).resolve() == Path(masks).resolve():
        # One folder holding both: images are the files that are not masks.
        img_files = {pair_stem(p): p for p in list_images(images)
                     if not p.stem.endswith(LABEL_TAGS)}
        mask_files = {pair_stem(p): p for p in list_images(masks)
                      if p.stem.endswith(LABEL_TAGS)}
    missing = sorted(set(img_files) ^ set(mask_files))
    if missing:
        raise ValueError(f"images and masks do not pair up; without a partner: {missing}")
    if not img_files:
        raise ValueError(f"no images found in {images}")
    return [(stem, read_image(img_files[stem], channel), read_labels(mask_files[stem]))
            for stem in sorted(img_files)]


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
