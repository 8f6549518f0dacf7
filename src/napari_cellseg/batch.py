"""Segment a list of files, writing what the CLI writes: <stem>_masks.tif,
<stem>_cells.csv and <stem>_params.json. Used by the CLI and the Batch widget."""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from .io import check_can_write, read_image, write_labels


def output_paths(path: Path, out: Path) -> dict[str, Path]:
    stem = Path(path).stem
    return {"masks": out / f"{stem}_masks.tif", "table": out / f"{stem}_cells.csv",
            "params": out / f"{stem}_params.json"}


def iter_segment_files(
    paths: Sequence[str | Path],
    out: str | Path,
    method: str = "unet",
    params: dict | None = None,
    pixel_size: float | None = None,
    model=None,
    device: str = "auto",
    channel: int | None = None,
    overwrite: bool = False,
) -> Generator[tuple[int, int], None, list[tuple[Path, int]]]:
    """Segment each file; yield (files done, total); return [(path, number of cells)].

    Every output path is checked before any work starts, so a refused overwrite never
    leaves a half-written batch. ``params`` go to :func:`segment_classic` for
    ``method="classic"`` and to :meth:`Prediction.segment` for ``"unet"``.
    """
    from .core.measure import cell_table

    out = Path(out)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to segment")
    if method not in ("unet", "classic"):
        raise ValueError(f"method must be 'unet' or 'classic', got {method!r}")
    out.mkdir(parents=True, exist_ok=True)
    stems = [p.stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"several inputs share the name(s) {dupes}; their outputs would collide")
    for p in paths:
        for target in output_paths(p, out).values():
            check_can_write(target, overwrite)
    params = dict(params or {})
    net = None
    if method == "unet":
        from .model.store import load_model

        net = load_model(model, device="cpu")
    results = []
    for i, path in enumerate(paths):
        image = read_image(path, channel)
        if image.ndim != 2:
            raise ValueError(f"{path}: a stack of shape {image.shape}; segment 2-D images "
                             "(or split the stack into planes first)")
        if method == "classic":
            from .core.classic import segment_classic

            labels = segment_classic(image, **params)
        else:
            from .pipeline import predict

            labels = predict(image, pixel_size, net, device).segment(**params)
        files = output_paths(path, out)
        write_labels(files["masks"], labels, overwrite=overwrite)
        cell_table(labels, image, pixel_size).to_csv(check_can_write(files["table"], overwrite), index=False)
        record = {"image": str(path), "method": method, "parameters": params,
                  "pixel_size_um": pixel_size, "model": None if model is None else str(model),
                  "cells": int(labels.max())}
        check_can_write(files["params"], overwrite).write_text(json.dumps(record, indent=2, default=_jsonable))
        results.append((path, int(labels.max())))
        yield i + 1, len(paths)
    return results


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return str(x)
