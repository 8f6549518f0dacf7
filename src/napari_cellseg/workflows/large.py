"""Whole slides, block by block, on dask.distributed: the whole-image answer with memory
bounded by the block.

Why this is exact (each point is measured in ``tests/test_large.py``):

* the network's normalisation percentiles come from the whole image (a strided sample
  of at most ``sample_pixels``: every pixel up to 16 Mpx, so exact there) and are applied
  to every block;
* the UNet runs on the whole image's tile grid, fixed to the image origin
  (:func:`~napari_cellseg.model.inference.iter_probabilities_region`): a block's
  probabilities equal the whole image's bit for bit;
* seeds and cells are computed on the block plus a halo; a cell belongs to the block
  that holds its first pixel in raster order and is named from that position, so no
  merge graph is needed; when a cell, its seed region or a landscape basin that reaches
  into the block also reaches the halo's outer edge, the block is rerun with a doubled
  halo ("healed"), up to the whole image;
* the dim-cell filter reads the image normalised by whole-image percentiles.

Final ids are consecutive, numbered block by block (blocks in raster order) and, within
a block, by each cell's first pixel in raster order; the relabel pass of a block reads
only the owned-cell lists of the blocks its cells come from.

Stages that need statistics of the whole image are refused in block mode with a clear
error: the paper's shape split (Otsu levels of the whole LoG response),
``background="otsu3"``, ``intensity_weight > 0`` (percentiles of the smoothed image) and
a pixel size other than the model's (rescale the slide first).

Output: a zarr group (OME-NGFF 0.4 multiscale labels at its root: arrays ``0``, ``1`` ...,
each level chunked so that one block writes exactly one chunk), ``cells.csv`` (one row
per cell) and ``_work/`` (per-block markers, owned-cell lists, table parts and the
provisional labels named by first-pixel position), which make ``resume`` possible.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cells import CellStage
from ..core.params import Grid, SegmentParams
from ..progress import Progress, drain
from .engine import client_for, gpu_resources, set_threads, threads_per_host, unique_token

logger = logging.getLogger(__name__)

__all__ = ["LargeResult", "iter_segment_large", "segment_large"]

SAMPLE_PIXELS = 16_000_000  # the normalisation sample: every pixel of images up to this size
FORMAT = "napari-cellseg-large/1"


@dataclass
class LargeResult:
    """What :func:`segment_large` wrote and did."""

    path: Path
    shape: tuple[int, int]
    n_cells: int
    n_blocks: int
    computed: list[tuple[int, int]] = field(default_factory=list)  # blocks run this time
    skipped: list[tuple[int, int]] = field(default_factory=list)  # blocks found done (resume)
    healed: dict[str, int] = field(default_factory=dict)  # "i,j" -> halo used, where > halo
    seconds: float = 0.0

    @property
    def labels_path(self) -> Path:
        return self.path / "0"

    @property
    def table_path(self) -> Path:
        return self.path / "cells.csv"


# --------------------------------------------------------------------------- source
def _open_source(source):
    """(array-like 2-D, how a task reopens it). Paths are reopened by each task; arrays
    travel with the task (scattered once)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such image: {path}")
        return _reopen(("path", str(path))), ("path", str(path))
    shape = getattr(source, "shape", None)
    if shape is None:
        source = np.asarray(source)
    arr = _squeeze2d(source, "source")
    return arr, ("array", arr)


def _source_pixel_size(spec) -> float | None:
    """The pixel size in µm a slide file states (None: an array, or a file that states
    none): a TIFF's metadata (io.read_pixel_size), or an OME-Zarr's full-resolution scale
    with its axes' unit (convert writes both, and its own record)."""
    if spec[0] != "path":
        return None
    path = Path(spec[1])
    if path.suffix.lower() in (".tif", ".tiff"):
        from ..io import read_pixel_size

        return read_pixel_size(path)
    import zarr

    from .._reader import _transforms
    from ..io import _plausible, _square, _um_per

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # not readable here: _read_path says so in words
        return None
    if hasattr(node, "shape"):
        return None
    own = node.attrs.get("napari_cellseg", {})
    if isinstance(own, dict) and own.get("pixel_size"):
        return float(own["pixel_size"])
    ms = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if not ms:
        return None
    axes = [a for a in ms[0].get("axes", []) if isinstance(a, dict)][-2:]
    units = [_um_per(a.get("unit", "")) for a in axes]
    scale, _ = _transforms(ms[0]["datasets"][0])
    if len(units) != 2 or None in units or not scale or len(scale) < 2:
        return None  # no unit: a scale in pixels says nothing of the optics
    # Y and X as a TIFF's are read: non-square pixels refused, a size no microscope gives ignored.
    return _plausible(path, "OME-Zarr", _square(path, "OME-Zarr", scale[-1] * units[1], scale[-2] * units[0]))


def _squeeze2d(arr, name: str):
    shape = tuple(int(s) for s in arr.shape)
    while len(shape) > 2 and shape[0] == 1:  # OME-Zarr (t, c, z, y, x) with singleton axes
        arr = arr[0]
        shape = shape[1:]
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D image (M, N), got shape {tuple(arr.shape)}; "
                         "pick one plane and channel first")
    from ..core.validate import real_pixels

    real_pixels(arr.dtype, name)
    return arr


def _read_path(path: Path):
    import zarr

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    else:
        node = zarr.open(str(path), mode="r")
    if not hasattr(node, "shape"):  # a group: an OME-Zarr image's full resolution, or a TIFF's level 0
        ms = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        keys = sorted(node.array_keys())
        if not ms and not keys:
            raise ValueError(f"{path}: a zarr group with no image in it (no array, no OME-Zarr multiscales)")
        node = node[ms[0]["datasets"][0]["path"] if ms else keys[0]]
    return _squeeze2d(node, str(path))


@functools.lru_cache(maxsize=4)
def _read_path_cached(path: str, mtime_ns: int):
    """One open store per file and process (a TIFF's index is parsed once, its handle kept
    open for the tasks that follow, not leaked per task)."""
    return _read_path(Path(path))


def _reopen(spec):
    kind, value = spec
    if kind != "path":
        return value
    return _read_path_cached(str(value), Path(value).stat().st_mtime_ns)


def _read(arr, rows: slice, cols: slice) -> np.ndarray:
    block = arr[rows, cols]
    if hasattr(block, "compute"):  # a dask array: computed here, never on the cluster's client
        block = block.compute(scheduler="synchronous")
    return np.asarray(block)


def _sample(arr, stride: int) -> np.ndarray:
    """``arr[::stride, ::stride]`` read in bands of rows (bounded memory)."""
    h, w = arr.shape
    band = max(stride, (2**26 // max(w, 1) // stride) * stride)  # ~64 Mpx read at a time
    parts = [_read(arr, slice(r, min(r + band, h)), slice(None))[::stride, ::stride]
             for r in range(0, h, band)]
    return np.concatenate(parts).astype(np.float32)


def _norm_stats(sample: np.ndarray, low: float, high: float) -> tuple | None:
    """``percentile_range`` of ``sample`` as JSON-able (lo, hi, kind): ``kind`` records
    whether they were numpy float64 percentiles or the Python-float min / max fallback,
    which enter the float32 arithmetic differently (NumPy 2 promotion rules)."""
    from ..core.preprocess import percentile_range

    value_range = percentile_range(sample, low, high)
    if value_range is None:
        return None
    lo, hi = value_range
    return float(lo), float(hi), "float64" if isinstance(lo, np.floating) else "float32"


def _normalizer(stats):
    """``apply_range`` with the slide's (lo, hi), restored to the types they had, so a
    block equals the same block of the whole image."""
    from ..core.preprocess import apply_range

    if stats is None:
        return lambda a: apply_range(a, None)
    lo, hi, kind = stats
    value_range = (np.float64(lo), np.float64(hi)) if kind == "float64" else (lo, hi)
    return lambda a: apply_range(a, value_range)


# --------------------------------------------------------------------------- one block
@dataclass(frozen=True)
class _Run:
    """Everything a block task needs (pickled once per task; arrays are scattered)."""

    source: Any
    out: str
    shape: tuple[int, int]
    block: int
    halo: int
    model: Any
    params: dict
    grid: tuple[float, float]  # pixel size, cell diameter (µm)
    net_stats: tuple[float, float] | None  # the network's normalisation (lo, hi)
    image_stats: tuple[float, float] | None  # the dim-cell filter's (1, 99.8) percentiles
    device: str
    tile: int
    pixel_size: float | None  # for the table's µm² column
    threads: dict  # host -> torch threads per task

    def grid_shape(self) -> tuple[int, int]:
        return tuple(math.ceil(n / self.block) for n in self.shape)


def _work(out: str | Path) -> Path:
    return Path(out) / "_work"


def _marker(out, kind: str, i: int, j: int) -> Path:
    return _work(out) / kind / f"{i}.{j}.json"


def _write_json(path: Path, data: dict) -> None:
    """Atomic: a killed task leaves no half-written marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class _OffsetImage:
    """A window of the image held in memory, indexed in whole-image coordinates."""

    def __init__(self, data: np.ndarray, r0: int, c0: int, shape: tuple[int, int]):
        self.data, self.r0, self.c0, self.shape = data, r0, c0, shape

    def __getitem__(self, key):
        rows, cols = key
        return self.data[rows.start - self.r0 : rows.stop - self.r0, cols.start - self.c0 : cols.stop - self.c0]


def _block_task(run: _Run, i: int, j: int, source=None, model=None) -> dict:
    """Segment block (i, j): write its provisional labels chunk, its owned-cell list and
    table part, then its done marker (last, so a killed task leaves the block undone)."""
    from ..core.measure import cell_table
    from ..model.inference import tile_plan
    from ..model.store import resolve_model

    t0 = time.perf_counter()
    # Scattered data come as arguments (dask resolves futures only there).
    run = replace(run, source=run.source if source is None else source,
                  model=run.model if model is None else model)
    set_threads(run.threads)
    net, _ = resolve_model(run.model)
    arr = _reopen(run.source)
    H, W = run.shape
    b = run.block
    core = (i * b, min((i + 1) * b, H), j * b, min((j + 1) * b, W))
    p = SegmentParams.from_mapping(run.params)
    grid = Grid(*run.grid)
    halo = run.halo
    plan = tile_plan(run.shape, net.config.divisor, run.tile)
    while True:
        win = (max(core[0] - halo, 0), min(core[1] + halo, H), max(core[2] - halo, 0), min(core[3] + halo, W))
        result = _segment_window(run, net, arr, plan, core, win, p, grid)
        if result is not None:
            break
        logger.info("block %d,%d: a cell reaches the halo's edge at halo %d; rerun with %d", i, j, halo, 2 * halo)
        halo *= 2
    cells, image = result
    y0, _, x0, x1 = win
    # Name every cell by its first pixel (whole-image raster index + 1).
    flat = cells.ravel()
    ids, first = np.unique(flat, return_index=True)
    first, ids = first[ids > 0], ids[ids > 0]
    fr, fc = np.divmod(first, x1 - x0)
    gr, gc = fr + y0, fc + x0
    name = np.zeros(int(cells.max()) + 1, dtype=np.int64)
    name[ids] = gr.astype(np.int64) * W + gc + 1
    cr = (slice(core[0] - y0, core[1] - y0), slice(core[2] - x0, core[3] - x0))
    _provisional(run.out)[core[0] : core[1], core[2] : core[3]] = name[cells[cr]]
    # The cells this block owns: first pixel inside it; sorted = raster order of first pixels.
    own = (gr >= core[0]) & (gr < core[1]) & (gc >= core[2]) & (gc < core[3])
    owned_ids = ids[own][np.argsort(name[ids[own]], kind="stable")]
    owned_names = name[owned_ids]
    np.save(_work(run.out) / "owned" / f"{i}.{j}.npy", owned_names)
    local = np.zeros(len(name), dtype=np.int32)
    local[owned_ids] = np.arange(1, len(owned_ids) + 1)
    table = cell_table(local[cells], image, run.pixel_size)
    table["label"] = owned_names  # provisional: renamed in the relabel pass
    table["centroid_y"] += y0
    table["centroid_x"] += x0
    table.drop(columns=["bright"]).to_csv(_work(run.out) / "parts" / f"{i}.{j}.csv", index=False)
    info = {"owned": len(owned_ids), "halo": halo, "window": list(win),
            "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    _write_json(_marker(run.out, "blocks", i, j), info)
    return info


class _WholeImageCellStage(CellStage):
    """A :class:`~napari_cellseg.core.cells.CellStage` whose dim-cell filter reads the
    window normalised with whole-image percentiles (not the window's own)."""

    def __init__(self, cell_probability, image, grid: Grid, normalized: np.ndarray, foreground=None):
        super().__init__(cell_probability, image, grid, foreground_probability=foreground)
        self._whole_image_normalized = normalized

    @property
    def normalized_image(self) -> np.ndarray:
        return self._whole_image_normalized


def _segment_window(run: _Run, net, arr, plan, core, win, p: SegmentParams, grid: Grid):
    """Cells of one window, or None when a cell that reaches into the core may depend on
    pixels beyond the window (the halo must grow)."""
    from scipy import ndimage as ndi

    from ..core.seeds import MIN_SEED_FLOOR, SEED_SMOOTHING_UM, SeedStage
    from ..model.inference import iter_probabilities_region
    from ..pipeline import foreground_probability

    H, W = run.shape
    y0, y1, x0, x1 = win
    # Read once every pixel the window's tiles need.
    th, tw = plan.tile
    b = plan.border
    rmap, cmap = plan.index_map(0), plan.index_map(1)
    rows = [r for r in plan.rows if r < y1 + b and r + th > y0 + b]
    cols = [c for c in plan.cols if c < x1 + b and c + tw > x0 + b]
    ri = rmap[rows[0] : rows[-1] + th]
    ci = cmap[cols[0] : cols[-1] + tw]
    r0, r1, c0, c1 = int(ri.min()), int(ri.max()) + 1, int(ci.min()), int(ci.max()) + 1
    data = _read(arr, slice(r0, r1), slice(c0, c1))
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        # The driver checked a sample only (strided above 16 Mpx): every block checks its own.
        bad = np.argwhere(~np.isfinite(data))[0]
        raise ValueError(f"the image holds NaN or infinite values (first at row {r0 + int(bad[0])}, "
                         f"column {c0 + int(bad[1])}); replace them first")
    src = _OffsetImage(data, r0, c0, (H, W))
    image = data[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0].astype(np.float32)
    if run.net_stats is None:  # a constant image: no cell (as iter_predict)
        return np.zeros(image.shape, np.int32), image
    probs = drain(iter_probabilities_region(net, src, (slice(y0, y1), slice(x0, x1)),
                                            transform=_normalizer(run.net_stats), device=run.device,
                                            tile=run.tile))
    del data, src
    seed_stage = SeedStage(probs[0], grid)
    cell = probs[0] + probs[1]
    cell_stage = _WholeImageCellStage(cell, image, grid, _normalizer(run.image_stats)(image),
                                      foreground=foreground_probability(probs, cell))
    seeds = seed_stage.seeds(p)
    cells = cell_stage.segment(seeds, p)
    # The band where the window's answer may differ from the whole image's: within the
    # smoothing's reach of a window edge that is not an image edge.
    sigma = SEED_SMOOTHING_UM / grid.pixel_size
    m = int(4.0 * sigma + 0.5) + 2
    band = np.zeros(cells.shape, bool)
    if y0 > 0:
        band[:m] = True
    if y1 < H:
        band[-m:] = True
    if x0 > 0:
        band[:, :m] = True
    if x1 < W:
        band[:, -m:] = True
    if not band.any():
        return cells, image
    coremask = np.zeros(cells.shape, bool)
    coremask[core[0] - y0 : core[1] - y0, core[2] - x0 : core[3] - x0] = True
    in_core = np.unique(cells[coremask])
    in_core = in_core[in_core > 0]
    # 1. a cell in the core reaches the band
    if np.isin(in_core, cells[band]).any():
        return None
    of_core_cells = np.isin(cells, in_core)
    # 2. the seed region (a component of the mask the seeds are cut from) of such a cell does
    comp, _ = ndi.label(seed_stage.smoothed > MIN_SEED_FLOOR)
    touching = np.unique(comp[band])
    touching = touching[touching > 0]
    if touching.size and np.isin(comp[of_core_cells], touching).any():
        return None
    # 3. a landscape basin holding foreground reaches both the band and the core or such a cell
    mask, _ = cell_stage.foreground(p, int(seeds.max()) if seeds.size else 0)
    basins = cell_stage.graph(p).basins
    fg_basins = np.zeros(int(basins.max()) + 1, bool)
    fg_basins[basins[mask]] = True
    edge_basins = np.unique(basins[band])
    edge_basins = edge_basins[fg_basins[edge_basins]]
    if edge_basins.size and np.isin(basins[coremask | of_core_cells], edge_basins).any():
        return None
    return cells, image


# --------------------------------------------------------------------------- relabel
def _relabel_task(run: _Run, i: int, j: int, offsets: np.ndarray, levels: int) -> int:
    """Final ids of block (i, j): ``offset of the owner block + rank of the first pixel
    among the owner's cells``; reads only the owned lists of the blocks named in it."""
    import zarr

    H, W = run.shape
    b = run.block
    rows, cols = slice(i * b, min((i + 1) * b, H)), slice(j * b, min((j + 1) * b, W))
    prov = _provisional(run.out)[rows, cols]
    names, inverse = np.unique(prov, return_inverse=True)
    final = np.zeros(len(names), dtype=np.int64)
    pos = names[names > 0] - 1
    owner_i, owner_j = (pos // W) // b, (pos % W) // b
    nb_cols = math.ceil(W / b)
    out_ids = np.zeros(len(pos), dtype=np.int64)
    for oi, oj in set(zip(owner_i.tolist(), owner_j.tolist(), strict=True)):
        owned = np.load(_work(run.out) / "owned" / f"{oi}.{oj}.npy")
        sel = (owner_i == oi) & (owner_j == oj)
        wanted = names[names > 0][sel]
        rank = np.searchsorted(owned, wanted)
        known = rank < len(owned)
        known[known] = owned[rank[known]] == wanted[known]
        if not known.all():
            # A fragment its owner block does not list would take a neighbour's id: two
            # cells with one id, and a table short of a row. Never silently.
            raise RuntimeError(f"block ({i}, {j}) holds {int((~known).sum())} cell fragment(s) that block "
                               f"({oi}, {oj}) does not list: the blocks disagree on a cell across their "
                               "border; run again with a larger halo (--halo), or --overwrite")
        out_ids[sel] = offsets[oi * nb_cols + oj] + rank + 1
    final[names > 0] = out_ids
    labels = final[inverse].reshape(prov.shape).astype(np.int32)
    root = zarr.open_group(run.out, mode="r+")
    for k in range(levels):
        s = 2**k
        root[str(k)][rows.start // s : -(-rows.stop // s), cols.start // s : -(-cols.stop // s)] = labels[::s, ::s]
    _write_json(_marker(run.out, "relabel", i, j), {"cells": int(np.count_nonzero(names))})
    return 0


def _provisional(out):
    import zarr

    return zarr.open_array(str(_work(out) / "provisional"), mode="r+")


# --------------------------------------------------------------------------- the run
def _check_params(p: SegmentParams) -> None:
    if p.seed_split == "shape":
        raise ValueError("seed_split='shape' needs Otsu levels of the whole image's LoG response and is "
                         "not available block-wise; use seed_split='probability' (the default) or "
                         "segment the image in one piece")
    if p.background == "otsu3":
        raise ValueError("background='otsu3' needs a 3-level Otsu of the whole image and is not "
                         "available block-wise; use background='probability' (the default)")
    if p.intensity_weight > 0:
        raise ValueError("intensity_weight > 0 reads percentiles of the whole smoothed image and is "
                         "not available block-wise; use intensity_weight=0 (the default)")


def _create(root, name: str, shape, chunks, dtype) -> None:
    kw = {"shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": 0}
    if hasattr(root, "create_array"):
        root.create_array(name, **kw)
    else:  # zarr 2
        root.create_dataset(name, **kw)


def _open_out(out: Path, record: dict, shape, block: int, levels: int, resume: bool, overwrite: bool):
    import zarr

    fmt = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    if out.exists():
        old = None
        try:
            old = dict(zarr.open_group(str(out), mode="r").attrs).get("napari_cellseg")
        except Exception:  # not a zarr group: refuse below unless overwrite
            old = None
        if overwrite and old is None:
            # Only a napari-cellseg output is deleted: --overwrite on a folder that holds
            # other files (the slide itself, say) would delete them.
            raise FileExistsError(f"{out} exists and is not a napari-cellseg output: not replaced, even "
                                  "with --overwrite; choose another output path")
        if overwrite:
            shutil.rmtree(out)
        elif old is None:
            raise FileExistsError(f"{out} exists and is not a napari-cellseg output; choose another "
                                  "output path")
        elif not resume:
            raise FileExistsError(f"{out} exists; pass resume=True (--resume) to finish it or "
                                  "overwrite=True (--overwrite) to start again")
        elif {k: v for k, v in old.items() if k != "complete"} != record:
            changed = sorted(k for k in record if old.get(k) != record[k])
            raise ValueError(f"{out} was written with other settings ({', '.join(changed)}); pass "
                             "overwrite=True (--overwrite) to start again")
        else:
            return
    root = zarr.open_group(str(out), mode="w", **fmt)
    for k in range(levels):
        s = 2**k
        _create(root, str(k), tuple(-(-n // s) for n in shape), (block // s, block // s), "int32")
    work = _work(out)
    for d in ("blocks", "relabel", "owned", "parts"):
        (work / d).mkdir(parents=True, exist_ok=True)
    zarr.open_array(str(work / "provisional"), mode="w", shape=shape, chunks=(block, block),
                    dtype="int64", fill_value=0, **fmt)
    px = record["pixel_size"]
    root.attrs.update({
        "multiscales": [{
            "version": "0.4", "name": "cells",
            "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": [{"path": str(k), "coordinateTransformations": [
                # Level k keeps every 2**k-th pixel of level 0 (labels[::s, ::s], not a
                # block mean): its first pixel is level 0's first, so no translation.
                {"type": "scale", "scale": [px * 2**k, px * 2**k]}]}
                for k in range(levels)],
            "type": "nearest"}],
        "image-label": {"version": "0.4", "source": {"image": record["source"]}},
        "napari_cellseg": record,
    })


def iter_segment_large(
    source,
    out,
    *,
    block: int = 4096,
    halo: int = 64,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    pixel_size: float | None = None,
    model=None,
    device: str = "cpu",
    tile: int = 512,
    sample_pixels: int = SAMPLE_PIXELS,
    **params,
) -> Generator[Progress, None, LargeResult]:
    """:func:`segment_large` as a generator: yields ``Progress(blocks_done, blocks, "blocks")``
    as blocks finish (then once per relabelled block), returns a :class:`LargeResult`."""
    try:
        import zarr
        from distributed import as_completed
    except ImportError as err:  # an optional extra: say how to get it, not a traceback
        raise RuntimeError(f"block-wise segmentation needs dask.distributed and zarr ({err}); "
                           "install them with: pip install 'napari-cellseg[large]'") from err

    from ..core.preprocess import REFERENCE_PIXEL_SIZE, scale_factor
    from ..core.validate import optional_pixel_size
    from ..model.store import model_record, resolve_model
    from ..pipeline import image_pixel_size

    t0 = time.perf_counter()
    out = Path(out)
    block, halo = int(block), int(halo)
    # 0 means unknown, as everywhere: the slide's own pixel size is then read and checked
    # (0 went past that check and ran a 0.25 µm slide at the model's 0.5, areas 4x).
    pixel_size = optional_pixel_size(pixel_size)
    if block < 64 or block % 32:
        raise ValueError(f"block must be a multiple of 32 and at least 64 px, got {block}")
    if halo < 8:
        raise ValueError(f"halo must be at least 8 px, got {halo}")
    arr, source_spec = _open_source(source)
    shape = tuple(int(s) for s in arr.shape)
    _, info = resolve_model(model)
    image_px = image_pixel_size(info)
    if image_px is not None:
        raise ValueError(f"this model runs its network at {info.pixel_size} µm/px for images of "
                         f"{image_px} µm/px (a 2x model); block-wise segmentation "
                         "runs on the model's grid only and does not support it yet: use a 1x model "
                         "(e.g. the default) for slides")
    if pixel_size is None:
        # The slide's own pixel size: it measures area_um2, and a slide at another scale
        # than the model's is refused, not segmented at the wrong one.
        stated = _source_pixel_size(source_spec)
        if stated is not None and info.pixel_size and abs(scale_factor(stated, info.pixel_size) - 1) > 0.01:
            raise ValueError(f"{source_spec[1]} states {stated:g} µm per pixel, the model's grid is "
                             f"{info.pixel_size:g} µm: block-wise segmentation runs on the model's grid "
                             f"only; rescale the slide to {info.pixel_size:g} µm/px first")
    else:
        stated = None
    if scale_factor(pixel_size, info.pixel_size) != 1.0:
        raise ValueError(f"pixel size {pixel_size} µm differs from the model's {info.pixel_size} µm: "
                         "block-wise segmentation runs on the model's grid only; rescale the slide "
                         "to the model's pixel size first (or pass pixel_size=None)")
    p = SegmentParams.from_mapping(info.extra.get("segment_defaults")).updated(**params)
    _check_params(p)
    grid_px = float(info.pixel_size or pixel_size or REFERENCE_PIXEL_SIZE)
    # Whole-image statistics, once.
    stride = max(1, math.ceil(math.sqrt(shape[0] * shape[1] / max(int(sample_pixels), 1))))
    sample = _sample(arr, stride)
    if not np.all(np.isfinite(sample)):
        raise ValueError("image contains NaN or infinite values; replace them first")
    constant = np.ptp(sample) == 0
    net_stats = None if constant or not info.normalize else _norm_stats(sample, *info.normalize)
    if not constant and not info.normalize:
        net_stats = (0.0, 1.0, "float32")  # (a - 0) / 1: a model that wants raw values
    image_stats = _norm_stats(sample, 1.0, 99.8)
    import hashlib

    # What the pixels are, not only their shape and percentiles: a resume onto another
    # image of the same shape (a file replaced under its name) is refused.
    sample_sha = hashlib.sha256(np.ascontiguousarray(sample).tobytes()).hexdigest()[:20]
    del sample
    levels = 1
    while max(shape) / 2**levels > block / 2 and block % 2 ** (levels + 1) == 0 and block // 2**levels >= 32:
        levels += 1
    record = {
        "format": FORMAT, "shape": list(shape), "block": block, "halo": halo,
        "source": str(source_spec[1]) if source_spec[0] == "path" else "array",
        # name, file and SHA-256: a resume with other weights (an upgrade) is refused
        "model": model_record(model), "params": p.to_dict(),
        "pixel_size": grid_px, "sample_stride": stride, "sample_sha256": sample_sha,
        # Where and in what tiles the network ran: blocks of one output must agree on them.
        "device": str(device), "tile": int(tile),
        "net_normalization": net_stats, "image_normalization": image_stats,
        "levels": levels,
    }
    record = json.loads(json.dumps(record))  # as the attributes store it (tuples -> lists)
    _open_out(out, record, shape, block, levels, resume, overwrite)
    nbi, nbj = math.ceil(shape[0] / block), math.ceil(shape[1] / block)
    blocks = [(i, j) for i in range(nbi) for j in range(nbj)]
    todo = [ij for ij in blocks if not _marker(out, "blocks", *ij).exists()]
    result = LargeResult(out, shape, 0, len(blocks), computed=list(todo),
                         skipped=[ij for ij in blocks if ij not in todo])
    c, close = client_for(client, scheduler, workers, processes, device) if todo or not _all_relabelled(out, blocks) \
        else (None, [])
    futures: list = []
    try:
        if c is not None:
            token = unique_token(out.resolve())
            gpu = gpu_resources(c, device)
            src = c.scatter(source_spec, broadcast=True, hash=False) if source_spec[0] == "array" else None
            mdl = c.scatter(model, broadcast=True, hash=False) if isinstance(model, tuple) else None
            run = _Run(source_spec if src is None else ("array", None), str(out), shape, block, halo, mdl, p.to_dict(), (grid_px, info.cell_diameter_um),
                       net_stats, image_stats, device, tile, pixel_size or stated or info.pixel_size,
                       threads_per_host(c))
            run = replace(run, model=None if mdl is not None else model)
            done = len(blocks) - len(todo)
            yield Progress(done, len(blocks), "blocks", f"{done} of {len(blocks)} blocks done")
            futures = [c.submit(_block_task, run, i, j, src, mdl, key=f"cellseg-block-{i}-{j}-{token}",
                                pure=False, retries=2, resources=gpu) for i, j in todo]
            for fut in as_completed(futures):
                fut.result()  # a block's error is the run's error
                done += 1
                yield Progress(done, len(blocks), "blocks", f"{done} of {len(blocks)} blocks segmented")
            # Offsets: cells owned by the blocks before, in raster order of blocks.
            counts = np.array([json.loads(_marker(out, "blocks", *ij).read_text())["owned"] for ij in blocks])
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            relabel = blocks if todo else [ij for ij in blocks if not _marker(out, "relabel", *ij).exists()]
            futures = [c.submit(_relabel_task, run, i, j, offsets, levels,
                                key=f"cellseg-relabel-{i}-{j}-{token}", pure=False, retries=2)
                       for i, j in relabel]
            for k, fut in enumerate(as_completed(futures), 1):
                fut.result()
                yield Progress(k, len(relabel), "blocks", f"{k} of {len(relabel)} blocks relabelled")
    finally:
        if futures and c is not None:  # stopped early (Cancel, an error): free the cluster
            c.cancel([f for f in futures if not f.done()])
        for obj in close:
            obj.close()
    result.healed = _healed(out, blocks, halo)
    result.n_cells = _write_table(out, blocks, shape, block)
    root = zarr.open_group(str(out), mode="r+")
    root.attrs["napari_cellseg"] = {**record, "complete": True}
    result.seconds = time.perf_counter() - t0
    return result


def _all_relabelled(out: Path, blocks) -> bool:
    return all(_marker(out, "relabel", *ij).exists() for ij in blocks) and (out / "cells.csv").exists()


def _healed(out: Path, blocks, halo: int) -> dict[str, int]:
    healed = {}
    for ij in blocks:
        h = json.loads(_marker(out, "blocks", *ij).read_text())["halo"]
        if h > halo:
            healed[f"{ij[0]},{ij[1]}"] = h
    return healed


def _write_table(out: Path, blocks, shape, block: int) -> int:
    """cells.csv: the parts in block order (= final id order), renamed 1..K, with the
    bright/dim class of the whole table (Otsu between all per-cell means). Streamed: the
    driver holds one part and the column of means (8 bytes per cell), not the table."""
    import pandas as pd

    from ..core.classic import two_class_cutoff
    from ..core.measure import TABLE_COLUMNS

    parts = [_work(out) / "parts" / f"{i}.{j}.csv" for i, j in blocks]
    means = [pd.read_csv(f, usecols=["mean_intensity"])["mean_intensity"].to_numpy() for f in parts]
    # float: an empty part reads as a column of objects
    means = np.concatenate(means).astype(np.float64) if means else np.zeros(0)
    means = means[np.isfinite(means)]  # a cell of NaN pixels only has no mean (core.measure)
    cut = two_class_cutoff(means) if len(means) else 0.0
    del means
    tmp = out / ".cells.csv.tmp"
    n = 0
    with tmp.open("w", newline="") as stream:
        stream.write(",".join(TABLE_COLUMNS) + "\n")
        for f in parts:
            table = pd.read_csv(f)
            if not len(table):
                continue
            table["label"] = np.arange(n + 1, n + len(table) + 1)
            mean = table["mean_intensity"].to_numpy(dtype=np.float64)
            table["bright"] = pd.array(np.where(np.isfinite(mean), mean > cut, None), dtype="boolean")
            table[list(TABLE_COLUMNS)].to_csv(stream, index=False, header=False)
            n += len(table)
    os.replace(tmp, out / "cells.csv")
    return n


def segment_large(source, out, *, block: int = 4096, halo: int = 64, client=None, resume: bool = True,
                  overwrite: bool = False, pixel_size: float | None = None, model=None,
                  progress=None, **kwargs) -> LargeResult:
    """Segment an image of any size block by block on dask.distributed, with the answer
    of :func:`napari_cellseg.segment` on the whole image.

    Parameters
    ----------
    source : (M, N) ndarray, dask array, or path
        A NumPy or dask array, a zarr array or OME-Zarr image (its full resolution), or a
        TIFF (read tile by tile through ``tifffile``'s zarr store).
    out : path
        The output zarr group (see the module docstring for its layout).
    block : int
        Block side in pixels (a multiple of 32); one task, one chunk.
    halo : int
        Context around each block; doubled for a block whose cells reach its edge.
    client : distributed.Client, optional
        Default: ``scheduler=`` (an address) to join a cluster, else a ``LocalCluster`` of
        ``workers=`` (default: one per core, within memory) single-thread workers;
        ``processes=False`` runs it in this process.
    resume : bool
        Finish a run found at ``out`` (same settings): only blocks without a done marker
        are computed.
    overwrite : bool
        Delete ``out`` first.
    pixel_size : float, optional
        µm per pixel; must be the model's (or None): the slide is not rescaled block-wise.
    model : str, path or (UNet, ModelInfo), optional
        Default: the default model. One model runs the whole slide: ``"auto"`` (the choice
        by look of ``predict``, per image) is refused in words.
    progress : callable, optional
        Called with each :class:`~napari_cellseg.progress.Progress` (blocks).
    **kwargs
        ``scheduler``, ``workers``, ``processes``, ``device`` (default "cpu"), ``tile``,
        ``sample_pixels``, and segmentation parameters (:class:`SegmentParams`).

    Returns
    -------
    LargeResult

    Raises
    ------
    ValueError
        Parameters that need whole-image statistics (``seed_split="shape"``,
        ``background="otsu3"``, ``intensity_weight > 0``), a pixel size other than the
        model's, an output written with other settings.
    FileExistsError
        ``out`` exists and neither ``resume`` nor ``overwrite`` applies.
    """
    gen = iter_segment_large(source, out, block=block, halo=halo, client=client, resume=resume,
                             overwrite=overwrite, pixel_size=pixel_size, model=model, **kwargs)
    return drain(gen, progress)
