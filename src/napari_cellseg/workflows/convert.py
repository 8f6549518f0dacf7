"""TIFF -> OME-Zarr for whole slides (``napari-cellseg convert``): band by band, so a
striped TIFF of any size converts in bounded memory, into the chunked layout that
block-wise segmentation (:mod:`.large`) and napari read lazily.

The image is written as OME-NGFF 0.4 (zarr format 2): a multiscale image whose level k
is level k-1 averaged over 2 x 2 pixels, chunks of ``chunk`` px, the pixel size in µm
from the TIFF's metadata (:func:`~napari_cellseg.io.read_pixel_size`) or ``pixel_size``.
RGB(A) slides keep one channel: the one given, else the one that carries signal in a
strided sample (as :func:`~napari_cellseg.io.select_channel` chooses for a frame).

Hand-written because tifffile reads and zarr writes, but neither converts band-wise
with a pyramid and the OME attributes (the ``ome-zarr`` package would add a dependency
for the attributes alone).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import Progress, drain

logger = logging.getLogger(__name__)

__all__ = ["ConvertResult", "convert_to_zarr", "iter_convert"]


@dataclass
class ConvertResult:
    path: Path
    shape: tuple[int, int]
    dtype: str
    levels: int
    pixel_size: float | None
    channel: int | None


def _open_tiff(path: Path):
    """(zarr array of the TIFF's full resolution, the tifffile store to close)."""
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True)
    node = zarr.open(store, mode="r")
    if not hasattr(node, "shape"):  # a pyramid TIFF: level 0
        node = node[sorted(node.array_keys(), key=lambda k: int(k) if k.isdigit() else 0)[0]]
    return node, store


def _layout(shape: tuple[int, ...], channel: int | None, path: Path) -> tuple[int, int, int | None]:
    """(rows, cols, channel axis index or None): a 2-D image or RGB(A), else an error."""
    dims = list(shape)
    while len(dims) > 2 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) == 2:
        if channel not in (None, 0):
            raise ValueError(f"channel {channel} given, but {path} has one channel (shape {tuple(shape)})")
        return dims[0], dims[1], None
    if len(dims) == 3 and dims[-1] in (3, 4):
        if channel is not None and not 0 <= channel < dims[-1]:
            raise ValueError(f"channel {channel} given, but {path} has {dims[-1]} channels (0-{dims[-1] - 1})")
        return dims[0], dims[1], len(shape) - 1
    raise ValueError(f"{path}: shape {tuple(shape)} is not a 2-D slide or an RGB(A) one; pick one "
                     "plane and channel first")


def _band(arr, rows: slice, lead: int, channel: int | None) -> np.ndarray:
    key = (0,) * lead + (rows, slice(None)) + ((channel,) if channel is not None else ())
    return np.asarray(arr[key])


def iter_convert(source, out, *, chunk: int = 1024, channel: int | None = None,
                 pixel_size: float | None = None, overwrite: bool = False,
                 min_level_size: int = 512) -> Generator[Progress, None, ConvertResult]:
    """:func:`convert_to_zarr` as a generator of ``Progress(bands done, bands, "bands")``."""
    import zarr

    from ..core.validate import optional_pixel_size, real_pixels
    from ..io import _check_file, read_pixel_size

    source, out = Path(source), Path(out)
    _check_file(source)
    if source.suffix.lower() not in (".tif", ".tiff", ".btf", ".tf8", ".svs", ".ndpi"):
        raise ValueError(f"{source}: convert reads TIFF files (.tif, .tiff, .btf ...)")
    chunk = int(chunk)
    if chunk < 64 or chunk % 32:
        raise ValueError(f"chunk must be a multiple of 32 and at least 64 px, got {chunk}")
    optional_pixel_size(pixel_size, "pixel_size")
    if out.resolve() == source.resolve() or source.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"the output {out} would replace the slide it is converted from ({source})")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    # An existing output is replaced only once the new one is complete (below): a refused
    # or failed conversion leaves it as it was.
    if pixel_size is None:
        pixel_size = read_pixel_size(source)
    arr, store = _open_tiff(source)
    try:
        real_pixels(arr.dtype, str(source))
        H, W, axis = _layout(arr.shape, channel, source)
        lead = len(arr.shape) - (3 if axis is not None else 2)
        levels = 1
        while max(H, W) / 2 ** (levels - 1) > min_level_size:  # until the coarsest fits a screen
            levels += 1
        # Bands hold whole strips of the TIFF (a strip is decoded whole).
        strip = int(getattr(arr, "chunks", (chunk,) * (lead + 1))[lead])
        step = chunk * max(1, math.ceil(strip / chunk))
        if step > 4 * chunk:
            logger.warning("%s stores %d rows per strip: each band decodes %d rows (about %.1f GB)",
                           source.name, strip, step, step * W * np.dtype(arr.dtype).itemsize * 4 / 1e9)
        if axis is not None and channel is None:
            channel = _live_channel(arr, H, lead, step)
            logger.info("%s: RGB slide, keeping channel %d (%s)", source.name, channel, "RGBA"[channel])
        tmp = out.with_name(f".{out.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        fmt = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
        root = zarr.open_group(str(tmp), mode="w", **fmt)
        dtype = arr.dtype
        shapes = [(-(-H // 2**k), -(-W // 2**k)) for k in range(levels)]
        for k, shape in enumerate(shapes):
            kw = {"shape": shape, "chunks": (chunk, chunk), "dtype": dtype if k == 0 else "float32",
                  "fill_value": 0}
            if hasattr(root, "create_array"):
                root.create_array(str(k), **kw)
            else:  # zarr 2
                root.create_dataset(str(k), **kw)
        total = math.ceil(H / step) + sum(math.ceil(s[0] / chunk) for s in shapes[1:])
        done = 0
        yield Progress(0, total, "bands", f"converting {source.name} ({H} x {W})")
        for r in range(0, H, step):
            rows = slice(r, min(r + step, H))
            root["0"][rows, :] = _band(arr, rows, lead, channel)
            done += 1
            yield Progress(done, total, "bands")
        for k in range(1, levels):  # each level from the one above, a band at a time
            prev, cur = root[str(k - 1)], root[str(k)]
            for r in range(0, cur.shape[0], chunk):
                rows = slice(r, min(r + chunk, cur.shape[0]))
                cur[rows, :] = _halve(np.asarray(prev[2 * rows.start : 2 * rows.stop, :]))
                done += 1
                yield Progress(done, total, "bands")
        px = pixel_size or 1.0
        unit = {"unit": "micrometer"} if pixel_size else {}
        root.attrs.update({"multiscales": [{
            "version": "0.4", "name": source.stem,
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [{"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": [px * 2**k, px * 2**k]},
                {"type": "translation", "translation": [px * (2**k - 1) / 2] * 2}]} for k in range(levels)],
            "type": "mean"}],
            "napari_cellseg": {"converted_from": str(source), "channel": channel, "pixel_size": pixel_size}})
        if out.exists():  # overwrite (checked above): the old output goes now, not before
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
        yield Progress(total, total, "bands", f"wrote {out}")
    finally:
        store.close()
    return ConvertResult(out, (H, W), str(dtype), levels, pixel_size, channel)


def _live_channel(arr, H: int, lead: int, step: int) -> int:
    """The channel with signal, chosen on a strided sample (as for a frame), read in
    bands of ``step`` rows (whole strips: each strip is decoded once)."""
    from ..io import select_channel

    stride = max(1, H // 512)
    # rows 0, stride, 2 * stride ... of the whole slide, whatever the band they fall in
    parts = [_band(arr, slice(r, min(r + step, H)), lead, None)[(-r) % stride :: stride, ::stride]
             for r in range(0, H, step)]
    _, used = select_channel(np.concatenate(parts))
    if used is None:
        raise ValueError("the slide has several live colour channels; choose one with channel= (--channel)")
    return used


def _halve(a: np.ndarray) -> np.ndarray:
    """2 x 2 mean (edge rows / columns averaged with themselves)."""
    a = a.astype(np.float32)
    if a.shape[0] % 2:
        a = np.concatenate([a, a[-1:]], axis=0)
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def convert_to_zarr(source, out, *, chunk: int = 1024, channel: int | None = None,
                    pixel_size: float | None = None, overwrite: bool = False, progress=None) -> ConvertResult:
    """Convert a (striped or tiled) TIFF slide to an OME-Zarr image, band by band.

    Parameters
    ----------
    source : path
        A TIFF (2-D grey, or RGB(A): one channel is kept).
    out : path
        The OME-Zarr folder to write (written under a temporary name, then moved into place).
    chunk : int
        Chunk side in px (a multiple of 32); memory holds about one band of ``chunk`` rows.
    channel : int, optional
        The RGB channel to keep (default: the one that carries signal).
    pixel_size : float, optional
        µm per pixel (default: the TIFF's metadata, if any).
    overwrite : bool
        Replace ``out`` if it exists (otherwise FileExistsError).
    progress : callable, optional
        Called with each :class:`~napari_cellseg.progress.Progress`.
    """
    return drain(iter_convert(source, out, chunk=chunk, channel=channel, pixel_size=pixel_size,
                              overwrite=overwrite), progress)
