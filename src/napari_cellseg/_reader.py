"""napari reader for the outputs of :func:`~napari_cellseg.workflows.large.segment_large`:
the labels pyramid as a lazy multiscale layer (nothing is read until napari draws it),
and the source image beside it when it can still be opened.

Recognising a path reads one small JSON file; dask and zarr are imported only when a
path is ours, so napari starts as fast without this plugin as with it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["napari_get_reader", "read_large"]

FORMAT_PREFIX = "napari-cellseg-large/"
TABLE_KEY = "cell_table"  # labels layer metadata: the per-cell table's path (not loaded)


def _attributes(path: Path) -> dict | None:
    """The group attributes of a zarr v2 (``.zattrs``) or v3 (``zarr.json``) folder."""
    try:
        if (path / ".zattrs").is_file():
            return json.loads((path / ".zattrs").read_text())
        if (path / "zarr.json").is_file():
            meta = json.loads((path / "zarr.json").read_text())
            if not isinstance(meta, dict):  # valid JSON, not zarr's: not ours
                return None
            return meta.get("attributes") if meta.get("node_type") == "group" else None
    except (OSError, ValueError):  # unreadable or not JSON: not ours
        return None
    return None


def _record(path: Path) -> tuple[dict, dict] | None:
    """(attributes, napari_cellseg record) of a segment_large output, or None."""
    if not path.is_dir():
        return None
    attrs = _attributes(path)
    if not isinstance(attrs, dict):
        return None
    record = attrs.get("napari_cellseg")
    if not isinstance(record, dict) or not str(record.get("format", "")).startswith(FORMAT_PREFIX):
        return None
    if not attrs.get("multiscales"):
        return None
    return attrs, record


def napari_get_reader(path: str | list[str]):
    """The reader for a segment_large output folder; None for any other path."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_large if _record(Path(path)) is not None else None


def _transforms(dataset: dict) -> tuple[list[float] | None, list[float] | None]:
    """(scale, translation) of one NGFF dataset, where given."""
    scale = translate = None
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation":
            translate = [float(v) for v in t["translation"]]
    return scale, translate


def _squeeze(arr):
    """Drop leading singleton axes ((t, c, z, y, x) -> (y, x)), as segment_large does."""
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _source_candidates(source: str, out: Path) -> list[Path]:
    """Where the recorded source may be: as written (absolute, or relative to the working
    folder of the run), then relative to the output's folder."""
    p = Path(source)
    return [p] if p.is_absolute() else [p, out.parent / p]


def _open_image(source: str | None, out: Path, shape: tuple[int, ...]) -> list | None:
    """The source image as dask arrays (full resolution first), or None where it is not
    recorded, missing, unreadable or no longer the shape that was segmented."""
    import dask.array as da
    import zarr

    if not source or source == "array":
        return None
    for path in _source_candidates(source, out):
        if not path.exists():
            continue
        try:
            if path.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
            else:
                node = zarr.open(str(path), mode="r")
            if hasattr(node, "shape"):
                levels = [node]
            else:  # a group: the OME-Zarr multiscales, else its arrays by name (TIFF pyramid)
                ms = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
                keys = [d["path"] for d in ms[0]["datasets"]] if ms else sorted(node.array_keys())
                levels = [node[k] for k in keys]
            data = [_squeeze(da.from_zarr(level)) for level in levels]
        except Exception as err:  # any reason it cannot be read: show the labels alone
            logger.warning("source image %s could not be opened (%s); showing the labels only", path, err)
            return None
        if data[0].ndim != 2 or tuple(data[0].shape) != tuple(shape):
            logger.warning("source image %s has shape %s, not the segmented %s; showing the labels only",
                           path, tuple(data[0].shape), tuple(shape))
            return None
        return data
    logger.info("source image %s not found; showing the labels only", source)
    return None


def _name(out: Path) -> str:
    name = out.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def read_large(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    """Layer data of a segment_large output: the source image (where it can be opened)
    and the labels, both lazy and multiscale, with the pixel size as layer scale."""
    import dask.array as da

    if isinstance(path, (list, tuple)):
        path = path[0]
    out = Path(path)
    found = _record(out)
    if found is None:
        raise ValueError(f"{out} is not a napari-cellseg segment-large output")
    attrs, record = found
    datasets = attrs["multiscales"][0]["datasets"]
    labels = [da.from_zarr(str(out / d["path"])) for d in datasets]
    scale, translate = _transforms(datasets[0])
    geometry = {k: v for k, v in (("scale", scale), ("translate", translate)) if v is not None}
    name = _name(out)
    table = out / "cells.csv"
    metadata = {
        TABLE_KEY: str(table) if table.is_file() else None,
        "pixel_size_um": scale[-1] if scale else record.get("pixel_size"),
        "complete": bool(record.get("complete", False)),
        "napari_cellseg": record,
    }
    if not metadata["complete"]:
        logger.warning("%s is an unfinished run: blocks not yet done show no cells "
                       "(finish it with segment-large --resume)", out)
    layers = []
    source = record.get("source") or attrs.get("image-label", {}).get("source", {}).get("image")
    image = _open_image(source, out, labels[0].shape)
    if image is not None:
        image_name = Path(source).name
        if image_name == name:
            image_name = f"{name} image"
        layers.append((image if len(image) > 1 else image[0],
                       {"name": image_name, "multiscale": len(image) > 1, **geometry,
                        "metadata": {"source": source}}, "image"))
    # One level (an image no larger than a block): a plain layer (napari refuses a
    # multiscale of one level).
    layers.append((labels if len(labels) > 1 else labels[0],
                   {"name": name, "multiscale": len(labels) > 1, **geometry, "metadata": metadata}, "labels"))
    return layers
