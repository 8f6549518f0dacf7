"""How often the automatic scale lands near the truth: the estimate alone, no segmentation.

    python benchmarks/scale_estimate.py [--model NAME] [--scales 0.5,0.6,1,2] [--within 1.25] [--json F]

Images, each drawn or rescaled at every scale (the true pixel size is 0.5 µm / scale):
the dense set's 7 validation strips (233 px wide, like the paper's test strips) and its 7
whole frames (trained on: the estimate only), and three images of each synthetic look of
``generalization.py`` (seeds 700-702, not the ones it scores). Per case and scale: the
share of images whose **applied** zoom (after the rule that keeps a zoom within √2 of 1
at the model's scale) puts the pixel size within ``--within`` of the truth, and the
measured / true pixel size of each. 0.6x asks for a zoom of 1.67, beyond that rule. An
estimate that finds nothing to measure counts as the pipeline then does: the model's scale.
The overall share includes the 7 whole frames (trained on); "held out" leaves them out.
Both are tuning-set figures: these images chose the estimator's settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from generalization import MODEL_PX, dense_case, rescale_pair, synthetic_case

LOOKS = ("whole_cell", "membrane", "tissue", "nuclei")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--scales", default="0.5,0.6,1,2")
    ap.add_argument("--within", type=float, default=1.25, help="factor around the true pixel size")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from _data import DENSE, dense_or_exit

    from napari_cellseg.io import load_pairs
    from napari_cellseg.model.store import resolve_model
    from napari_cellseg.scale import estimate_scale

    net, info = resolve_model(args.model)
    frames = list(load_pairs(dense_or_exit(), DENSE))
    report, hits, held_out = {}, [], []
    t0 = time.perf_counter()
    for scale in (float(s) for s in args.scales.split(",")):
        true_px = MODEL_PX / scale
        cases = {"strips": dense_case(scale),
                 "frames": [(n, *rescale_pair(im, lab, scale)) for n, im, lab in frames]}
        cases.update({look: synthetic_case(look, scale, n=3, first_seed=700) for look in LOOKS})
        for case, pairs in cases.items():
            measured, ok = [], []
            for _, image, _ in pairs:
                try:
                    e = estimate_scale(image, net, info, "cpu")
                except ValueError:  # nothing to measure: the pipeline takes the model's scale
                    measured.append(None)
                    ok.append(bool(abs(np.log(MODEL_PX / true_px)) <= np.log(args.within)))
                    continue
                measured.append(round(e.measured_pixel_size / true_px, 3))
                ok.append(abs(np.log(e.pixel_size / true_px)) <= np.log(args.within))
            hits += ok
            if case != "frames":  # the whole frames were trained on
                held_out += ok
            report.setdefault(case, {})[str(scale)] = {"share": round(float(np.mean(ok)), 3),
                                                       "measured_over_true": measured}
            print(f"{case:10s} x{scale:<4g} applied within {args.within:g}x: {sum(ok)}/{len(ok)}  "
                  f"measured / true: {measured}", flush=True)
    print(f"overall: {np.mean(hits):.3f} of {len(hits)} images; held out (no whole frame): "
          f"{np.mean(held_out):.3f} of {len(held_out)} ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        report["overall"] = round(float(np.mean(hits)), 3)
        report["held_out"] = round(float(np.mean(held_out)), 3)
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
