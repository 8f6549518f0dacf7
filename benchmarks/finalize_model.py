"""Ship a trained model: copy it into the package with its tuned segmentation defaults.

    python benchmarks/finalize_model.py runs/m2.safetensors --set min_intensity=0.05

The defaults travel in the weight file's metadata (``segment_defaults``): predict() and
the widgets start from them. Anything not set is the library default (SegmentParams).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--name", default="dense_tcells")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a segmentation default (a SegmentParams field), e.g. sensitivity=60")
    ap.add_argument("--image-pixel-size", type=float, default=None, metavar="UM",
                    help="for a model trained on upsampled images (e.g. 2x: trained at 0.25 µm/px "
                         "on 0.5 µm/px images): the images' pixel size, taken for an image that "
                         "gives none, and the grid it is segmented on")
    args = ap.parse_args()

    from napari_cellseg.core.params import SegmentParams
    from napari_cellseg.model.store import load_model, save_model

    net, info = load_model(args.model)
    defaults = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SegmentParams.__dataclass_fields__:
            raise SystemExit(f"unknown segmentation parameter {key!r}")
        try:
            defaults[key] = float(value)
        except ValueError:
            defaults[key] = value
    info.extra["segment_defaults"] = defaults
    if args.image_pixel_size is not None:
        info.extra["image_pixel_size"] = args.image_pixel_size
    info.extra["source_file"] = Path(args.model).name
    target = Path(__file__).resolve().parents[1] / "src" / "napari_cellseg" / "model" / "weights"
    path = save_model(target / f"{args.name}.safetensors", net, info, overwrite=True)
    print(f"shipped {path} with defaults {info.extra['segment_defaults']}")


if __name__ == "__main__":
    main()
