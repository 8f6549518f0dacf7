"""Sample data made by the project's own generators (nothing is downloaded).

napari shows these under File > Open Sample > napari-cellseg; the CLI's ``sample``
command writes the same images to a folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import synthetic

TISSUE_SEED = 20180510
WHOLE_CELL_SEED = 2024


def lesson_image() -> np.ndarray:
    """The lesson image: 8 Gaussian cells on noise, 128 x 128."""
    return synthetic.make_image()[0].astype(np.float32)


def tissue_scene() -> synthetic.SyntheticScene:
    """Dense membrane-stained tissue, 512 x 512 at 0.5 µm / px (cells about 7.5 µm across,
    like the dense T-cell set), with exact instance labels."""
    return synthetic.make_whole_cell_image(
        seed=TISSUE_SEED, shape=(512, 512), cell_radius=7.5, density=0.8, stain="membrane",
        noise_scale=0.05)


def whole_cell_scene() -> synthetic.SyntheticScene:
    """Cytoplasm-stained culture, 256 x 256: bright cytoplasm, dim nucleus."""
    return synthetic.make_whole_cell_image(seed=WHOLE_CELL_SEED, shape=(256, 256), cell_radius=12.0,
                                           density=0.7, stain="cytoplasm")


def lesson_sample() -> list[tuple]:
    return [(lesson_image(), {"name": "lesson image"}, "image")]


def _scene_layers(scene: synthetic.SyntheticScene, name: str, pixel_size: float | None) -> list[tuple]:
    meta = {"pixel_size_um": pixel_size} if pixel_size else {}
    return [
        (scene.image, {"name": name, "metadata": meta}, "image"),
        (scene.labels, {"name": f"{name} ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]


def tissue_sample() -> list[tuple]:
    return _scene_layers(tissue_scene(), "synthetic tissue", 0.5)


def whole_cell_sample() -> list[tuple]:
    return _scene_layers(whole_cell_scene(), "synthetic whole-cell", None)


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Scale a float image to 16 bits the way a camera would (0..65535, clipped)."""
    top = float(np.max(image)) if image.size else 0.0
    scale = 60000.0 / top if top > 0 else 1.0
    return np.clip(np.round(image * scale), 0, 65535).astype(np.uint16)


def write_samples(folder: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the sample images (16-bit TIFF) and their truth to ``folder``."""
    import tifffile

    from .io import check_can_write, write_labels

    folder = Path(folder)
    tissue = tissue_scene()
    culture = whole_cell_scene()
    planned = {
        "lesson.tif": to_uint16(lesson_image()),
        "tissue.tif": to_uint16(tissue.image),
        "whole_cell.tif": to_uint16(culture.image),
    }
    labels = {"tissue_masks.tif": tissue.labels, "whole_cell_masks.tif": culture.labels}
    for name in [*planned, *labels]:
        check_can_write(folder / name, overwrite)
    out = []
    for name, data in planned.items():
        tifffile.imwrite(folder / name, data, compression="zlib")
        out.append(folder / name)
    for name, data in labels.items():
        out.append(write_labels(folder / name, data, overwrite=overwrite))
    return out
