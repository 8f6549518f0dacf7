"""napari-cellseg: whole-cell segmentation of 2-D fluorescence images.

Public API (imported lazily: ``import napari_cellseg`` loads neither Qt, napari nor
torch)::

    predict(image, pixel_size="auto", model=None, device="auto") -> Prediction
    segment(image, pixel_size="auto", model=None, **params)     -> labels
    segment_classic(image, sigma=2.0, threshold=0.5, ...)     -> labels
    evaluate(gt, pred, iou=0.5, min_size=0)                   -> Evaluation
    cell_table(labels, image=None, pixel_size=None)           -> pandas.DataFrame
    segment_large(source, out.zarr, block=4096, halo=64, ...) -> LargeResult (dask)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "predict": "napari_cellseg.pipeline",
    "segment": "napari_cellseg.pipeline",
    "Prediction": "napari_cellseg.pipeline",
    "SegmentParams": "napari_cellseg.pipeline",
    "segment_classic": "napari_cellseg.core.classic",
    "evaluate": "napari_cellseg.core.metrics",
    "Evaluation": "napari_cellseg.core.metrics",
    "cell_table": "napari_cellseg.core.measure",
    "read_image": "napari_cellseg.io",
    "read_labels": "napari_cellseg.io",
    "write_labels": "napari_cellseg.io",
    "segment_large": "napari_cellseg.workflows.large",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_cellseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
