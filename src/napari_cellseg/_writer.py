"""napari writer for label layers: TIFF (uint16 / uint32) or 16-bit PNG."""

from __future__ import annotations

from typing import Any

from .io import write_labels


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer; an existing file is never replaced silently. A multiscale
    layer (a slide's) is written at its finest level."""
    if meta.get("multiscale"):
        data = data[0]
    return [str(write_labels(path, data, overwrite=False))]
