"""Ship a trained model: copy it into the package with its tuned segmentation defaults.

    python benchmarks/finalize_model.py runs/m2.best.safetensors --sensitivity 80 --h 1.0

The defaults travel in the weight file's metadata (``segment_defaults``): predict() and
the widgets start from them; the paper's values stay the library defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--name", default="dense_tcells")
    ap.add_argument("--sensitivity", type=float, required=True)
    ap.add_argument("--h", type=float, required=True)
    ap.add_argument("--min-intensity", type=float, default=0.05)
    args = ap.parse_args()

    from napari_cellseg.model.store import load_model, save_model

    net, info = load_model(args.model)
    info.extra["segment_defaults"] = {"sensitivity": args.sensitivity, "h": args.h,
                                      "min_intensity": args.min_intensity}
    info.extra["source_file"] = Path(args.model).name
    target = Path(__file__).resolve().parents[1] / "src" / "napari_cellseg" / "model" / "weights"
    path = save_model(target / f"{args.name}.safetensors", net, info, overwrite=True)
    print(f"shipped {path} with defaults {info.extra['segment_defaults']}")


if __name__ == "__main__":
    main()
