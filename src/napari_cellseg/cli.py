"""The ``napari-cellseg`` command: the same pipeline as the viewer, no Qt."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("napari_cellseg")


def _model_help(auto: bool = True) -> str:
    """``--model``'s help: the built-in models by name, the default first; ``auto``: the
    default is the choice by look (choose.py), else the default model."""
    from .model.registry import DEFAULT_MODEL, builtin_models

    others = [name for name in builtin_models() if name != DEFAULT_MODEL]
    default = (f"default: 'auto', {DEFAULT_MODEL} or, where the network is surer of the image's cells "
               "with it, multiscale_nuclei (each image's params JSON says which; --zarr: "
               f"{DEFAULT_MODEL})" if auto
               else f"default: {DEFAULT_MODEL}")
    return (f"a model name or .safetensors path; built in: {DEFAULT_MODEL}, {', '.join(others)} "
            f"(multiscale_nuclei for nuclei in a DNA stain: DAPI, Hoechst); {default}")


def _add_segment(sub: argparse._SubParsersAction) -> None:
    from .core import classic

    p = sub.add_parser("segment", help="segment images; writes <stem>_masks.tif, <stem>_cells.csv "
                                       "and <stem>_params.json")
    p.add_argument("images", nargs="*", type=Path, help="TIFF / PNG images (grey or RGB)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created); with --zarr: the "
                                                          "output zarr")
    p.add_argument("--zarr", default=None, metavar="SLIDE",
                   help="a whole slide (zarr, OME-Zarr or tiled TIFF) segmented block by block: "
                        "the same as 'segment-large SLIDE'")
    p.add_argument("--resume", action="store_true",
                   help="skip images whose outputs were written with these very settings; finish the rest")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None,
                   help="run one task per image on a local dask cluster of N workers")
    g.add_argument("--scheduler", default=None,
                   help="run one task per image on a dask cluster, e.g. tcp://host:8786 (workers must "
                        "read the images and write --out)")
    p.add_argument("--block", type=int, default=4096, help="with --zarr: block side in px")
    p.add_argument("--halo", type=int, default=64, help="with --zarr: context around a block in px")
    p.add_argument("--method", choices=("unet", "classic"), default="unet")
    p.add_argument("--channel", type=int, default=None, help="RGB channel (default: the one with signal)")
    p.add_argument("--pixel-size", type=_pixel_size_arg, default=None,
                   help="µm per pixel; 'auto' to estimate it from the image; 'model' to take the "
                        "image at the model's own (default, or 0: the pixel size in each file's metadata "
                        "(OME-TIFF, ImageJ, TIFF resolution), else estimated from the image with "
                        "the unet method, else the model's)")
    p.add_argument("--cell-diameter", type=_diameter_arg, default=None, metavar="D[px|um]",
                   help="the cells' typical diameter (unet method): in pixels (e.g. 30 or 30px), "
                        "instead of a pixel size; or in µm (e.g. 12um) with the pixel size given or "
                        "in each file's metadata, for cells of another size than the model's")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--same-scale", action="store_true",
                   help="one experiment's images, taken at one scale: the images whose scale is "
                        "estimated share one, the median of the estimates of up to 8 of them (and one "
                        "model when none is named), so that their µm compare (unet method)")
    g = p.add_argument_group("unet method")
    g.add_argument("--model", default=None, help=_model_help())
    # None until checked: a classic run given --device is refused, not ignored (then "auto").
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    g.add_argument("--sensitivity", type=float, default=None, help="seed sensitivity 0-100")
    g.add_argument("--seed-split", choices=("probability", "shape"), default=None,
                   help="probability (default): maxima of the seed probability; shape: the paper's")
    g.add_argument("--h-probability", type=float, default=None,
                   help="probability split: dip between two seeds, 0-1 (default 0.15)")
    g.add_argument("--h", type=float, default=None, help="shape split: h of the h-minima, µm")
    g.add_argument("--cell-threshold", type=float, default=None,
                   help="cell probability above which a pixel can be a cell (default 0.4)")
    g = p.add_argument_group("classic method")
    # Defaults None, filled in _segment: an option of the other method is then refused, not ignored.
    g.add_argument("--sigma", type=float, default=None, help=f"smoothing, px (default {classic.SMOOTH_SIGMA})")
    g.add_argument("--threshold", type=float, default=None, help=f"0-1 scale (default {classic.THRESHOLD})")
    g.add_argument("--min-size", type=int, default=None, help=f"px (default {classic.MIN_CELL_SIZE})")
    g.add_argument("--threshold-method", choices=classic.THRESHOLD_METHODS, default=None,
                   help="default global")
    g.add_argument("--split", choices=classic.SPLIT_METHODS, default=None,
                   help="split touching cells (intensity or distance watershed)")
    g.add_argument("--normalize", choices=classic.NORMALIZE_MODES, default=None,
                   help="thresholds are on a 0-1 scale; auto: percentile-normalise integer (camera) "
                        "images and float images far off 0-1, use 0-1 float images as they are")


def _segment(args: argparse.Namespace) -> int:
    from .batch import iter_segment_files
    from .core import validate
    from .core.params import SegmentParams
    from .io import check_output_folder, result_paths
    from .progress import drain

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    # An option of the other method is refused, not ignored.
    unet_only = {"--model": args.model, "--sensitivity": args.sensitivity, "--seed-split": args.seed_split,
                 "--h-probability": args.h_probability, "--h": args.h, "--cell-threshold": args.cell_threshold,
                 "--device": args.device}
    classic_only = {"--sigma": args.sigma, "--threshold": args.threshold, "--min-size": args.min_size,
                    "--threshold-method": args.threshold_method, "--split": args.split,
                    "--normalize": args.normalize}
    other = classic_only if args.method == "unet" else unet_only
    given = [name for name, value in other.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --method "
                         f"{'classic' if args.method == 'unet' else 'unet'}, not {args.method}")
    if args.device is None:
        args.device = "auto"
    if args.zarr is not None:
        if args.images:
            raise ValueError("give either images or --zarr SLIDE, not both")
        if args.same_scale:
            raise ValueError("--same-scale goes with images, not --zarr: a slide is segmented at one "
                             "scale already (the model's grid)")
        if args.channel is not None:
            raise ValueError("--channel goes with images, not --zarr: a slide is one channel (convert "
                             "picks it: napari-cellseg convert --channel)")
        if args.method != "unet" or args.pixel_size == "auto" or args.cell_diameter is not None:
            raise ValueError("--zarr runs the unet method on the model's grid: no --method classic, "
                             "--pixel-size auto or --cell-diameter (rescale the slide first)")
        if args.pixel_size == "model":
            args.pixel_size = None
        if args.device == "auto":  # segment-large's default: the block-wise CUDA path is untested
            args.device = "cpu"
        args.image = args.zarr
        return _segment_large(args)
    if not args.images:
        raise ValueError("no images given (or --zarr SLIDE for a whole slide)")
    # Every argument is checked before any image is read or any work done.
    if args.pixel_size not in ("auto", "model"):
        # 0 means unknown, as None (and as the Batch widget's 0): each file's own, else estimated.
        args.pixel_size = validate.optional_pixel_size(args.pixel_size, "--pixel-size")
    diameter = {}
    if args.cell_diameter is not None:
        value, unit = args.cell_diameter
        if args.method == "classic":
            raise ValueError("--cell-diameter goes with the unet method")
        if unit == "px" and args.pixel_size is not None:
            raise ValueError("--cell-diameter in px goes without --pixel-size (give it in µm, e.g. "
                             "12um, to use both)")
        if unit == "µm" and args.pixel_size in ("auto", "model"):
            raise ValueError(f"--cell-diameter in µm needs the pixel size: a number, or each file's "
                             f"metadata, not --pixel-size {args.pixel_size}")
        validate.finite_positive(value, "--cell-diameter", unit)
        diameter = {"cell_diameter_px" if unit == "px" else "cell_diameter_um": value}
    if args.same_scale and (args.method == "classic" or args.pixel_size not in (None, "auto") or diameter):
        raise ValueError("--same-scale estimates one scale for the images: it goes with the unet method, "
                         "without --pixel-size (or with --pixel-size auto) and --cell-diameter")
    if args.method == "classic" and args.pixel_size in ("auto", "model"):
        raise ValueError(f"--pixel-size {args.pixel_size} needs the unet method (the classic one has "
                         "no model to size cells against)")
    if args.method == "classic":
        from .core import classic

        params = {"sigma": classic.SMOOTH_SIGMA if args.sigma is None else args.sigma,
                  "threshold": classic.THRESHOLD if args.threshold is None else args.threshold,
                  "min_size": classic.MIN_CELL_SIZE if args.min_size is None else args.min_size,
                  "method": args.threshold_method or "global", "split": args.split,
                  "normalize": args.normalize or "auto"}
        if params["sigma"] < 0 or params["min_size"] < 0:
            raise ValueError(f"--sigma and --min-size must be >= 0, got {params['sigma']} and {params['min_size']}")
    else:
        from .model.inference import choose_device

        names = ("h", "sensitivity", "seed_split", "h_probability", "cell_threshold")
        params = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        SegmentParams(**params)  # a value out of range is an error now, not after the model ran
        choose_device(args.device)
    check_output_folder(args.out)

    def show(p) -> None:
        if len(args.images) > 1:
            print(f"\r  {p.text()}", end="", file=sys.stderr, flush=True)

    results = drain(iter_segment_files(
        args.images, args.out, args.method, params, pixel_size=args.pixel_size, model=args.model,
        device=args.device, channel=args.channel, overwrite=args.overwrite,
        **diameter, resume=args.resume, workers=args.workers,
        scheduler=args.scheduler, same_scale=args.same_scale), show)
    if len(args.images) > 1:
        print(file=sys.stderr)
    from .choose import is_auto

    remote = args.workers is not None or args.scheduler is not None  # their logs are not shown here
    for path, n in results:
        files = result_paths(args.out, path.stem)
        record = json.loads(files["params"].read_text())
        said = []
        if args.method == "unet" and is_auto(args.model):  # the model chosen for this image (choose.py)
            said.append(f"model {record['model']['name']}")
        source = record.get("scale_from") or record.get("pixel_size_from") or ""
        if "estimate" in source:  # which image got which scale (the log line names no file)
            size = record.get("scale_pixel_size_um") or record.get("pixel_size_um")
            if "no estimate used" in source:
                said.append("the model's pixel size: no estimate used")
            elif record.get("measured_pixel_size_um"):  # within √2 of the model's: left as it is
                said.append(f"pixel size {size:.3g} µm, the model's: {source} as "
                            f"{record['measured_pixel_size_um']:.3g} µm, close enough to keep")
            else:
                said.append(f"pixel size {size:.3g} µm, {source}")
        warned = record.get("warnings") or []
        if warned:
            said.append(f"{len(warned)} warning{'s' if len(warned) > 1 else ''}: see {files['params'].name}")
        detail = f" ({'; '.join(said)})" if said else ""
        print(f"{path.name}: {n} cells{detail} -> {files['labels']}")
        if remote:
            for text in warned:
                print(f"warning: {path.name}: {text}", file=sys.stderr)
    return 0


def _diameter_arg(text: str) -> tuple[float, str]:
    """--cell-diameter: a number with an optional unit, px (the default) or µm ("um")."""
    word = text.strip().lower().replace("µ", "u").replace("μ", "u")  # micro sign or Greek mu
    unit = next((u for u in ("px", "um") if word.endswith(u)), "px")
    number = word[: -len(unit)] if word.endswith(unit) else word
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a diameter in px or µm, e.g. 30, 30px or 12um; got {text!r}") from None
    return value, "µm" if unit == "um" else "px"


def _pixel_size_arg(text: str) -> float | str:
    """--pixel-size: a number of µm, "auto" or "model"."""
    word = text.strip().lower()
    return word if word in ("auto", "model") else float(text)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted label images against ground truth")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth label images")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted label images")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--min-size", type=int, default=0, help="drop objects below N px on both sides")
    p.add_argument("--json", type=Path, default=None, help="write per-image and mean values")
    p.add_argument("--csv", type=Path, default=None, help="write the per-image table")
    p.add_argument("--overwrite", action="store_true")


def _evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from .io import check_can_write
    from .workflows.evaluation import SHOWN_COLUMNS, evaluate_folders

    for f in (args.json, args.csv):
        if f is not None:
            check_can_write(f, args.overwrite)
    report = evaluate_folders(args.gt, args.pred, iou=args.iou, min_size=args.min_size)
    for path in report.unpaired_gt:
        print(f"warning: {path.name} has no prediction in {args.pred}", file=sys.stderr)
    for path in report.unpaired_pred:
        print(f"warning: {path.name} has no ground truth in {args.gt}", file=sys.stderr)
    df = report.table()
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df[list(SHOWN_COLUMNS)].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    means = report.means()
    print(f"mean over {len(df)} images (IoU {args.iou}): mAP {means['mAP']:.3f}  "
          f"AP50:95 {means['ap_50_95']:.3f}  ARI {means['ari']:.3f}  SM {means['sm']:.3f}")
    if report.unpaired_gt or report.unpaired_pred:
        print(f"unpaired files: {len(report.unpaired_gt)} ground truth, {len(report.unpaired_pred)} "
              "predictions (listed above, not scored)")
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .model.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train or fine-tune the UNet on image / mask pairs")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--masks", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="model file (.safetensors)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--patch", type=int, default=d.patch)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch)
    p.add_argument("--loss", choices=("ce", "rmsd"), default=d.loss)
    p.add_argument("--class-weights", default=",".join(str(w) for w in d.class_weights),
                   help="loss weights of seed, cytoplasm, background")
    p.add_argument("--contact-weight", type=float, default=d.contact_weight,
                   help="loss weight of the background between two cells (1: as any pixel)")
    p.add_argument("--touch-class", action="store_true",
                   help="a new network gets a 4th output, where two cells touch (their shared border "
                        "is given back to them); a 3-class --init model grows the 4th output")
    p.add_argument("--seed-target", choices=("hard", "soft"), default=d.seed_target,
                   help="seed class of cell pixels: hard (relative depth > 0.5) or soft (graded by depth)")
    p.add_argument("--init", default=None, help="fine-tune from this model (name or path)")
    # model.unet.LIGHT_CHANNELS (spelt out: no torch at parse time): the network the default
    # model and every cross-validated recipe have (until 2026-11-23 this said
    # 16,32,64,128,128, dense_tcells' five levels).
    p.add_argument("--channels", default="16,32,64,128",
                   help="UNet widths per level of a new network (default: the default model's)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=d.precision,
                   help="auto: bfloat16 autocast where the hardware has it natively")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="decay of a moving average of the weights, which is validated and saved "
                        "(e.g. 0.998); 0: off")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="right-hand strip of each image kept for validation; 0: train on every "
                        "pixel, no validation (the last epoch is saved)")
    p.add_argument("--val-band", default=None, metavar="K/N",
                   help="spatial cross-validation instead: hold out vertical band K of N (1-based, "
                        "e.g. 2/5) of every image; cells cut by its edges are left out of the loss")
    p.add_argument("--synthetic", type=int, default=16, help="synthetic whole-cell images mixed in")
    p.add_argument("--synthetic-nuclei", type=int, default=0, metavar="N",
                   help="synthetic images of nuclei in a DNA stain (blurred, with an out-of-focus "
                        "glow) added to the synthetic images")
    p.add_argument("--synthetic-fraction", type=float, default=d.synthetic_fraction, metavar="P",
                   help=f"share of the patches drawn from the synthetic images (default {d.synthetic_fraction})")
    p.add_argument("--pixel-size", type=float, default=None,
                   help="µm per pixel of the images (default: what their files state, else the --init "
                        "model's, else 0.5; for a 2x --init model its images' pixel size: the pairs are "
                        "upsampled onto its grid)")
    p.add_argument("--channel", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="time budget: stop in time, the learning-rate schedule fitted to the epochs "
                        "that fit (0: run every epoch)")
    p.add_argument("--freeze-norm", action="store_true",
                   help="keep the --init model's batch-norm statistics (the Train widget's fine-tune, "
                        "with --lr 1e-4: a few annotated cells then pull the model less far)")
    p.add_argument("--scale-jitter", default=None, metavar="LO,HI",
                   help="zoom augmentation: patches (half; --scale-p) drawn at a zoom between LO and HI "
                        "(e.g. 0.6,1.6: cells 0.6-1.6x their size), so the model works at pixel sizes "
                        "off its own; default: off")
    p.add_argument("--blur", type=float, default=d.blur, metavar="SIGMA",
                   help="blur augmentation: patches (30 %%; --blur-p) blurred by a Gaussian of sigma "
                        "0.5-SIGMA px (e.g. 2), for images from a coarser optic; default: off")
    p.add_argument("--scale-p", type=float, default=d.scale_p, metavar="P",
                   help=f"share of the patches zoomed with --scale-jitter (default {d.scale_p})")
    p.add_argument("--blur-p", type=float, default=d.blur_p, metavar="P",
                   help=f"share of the patches blurred with --blur (default {d.blur_p})")
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    p.add_argument("--overwrite", action="store_true")


def _scale_jitter(text: str | None) -> tuple[float, float]:
    from .model.data import check_scale_jitter

    if text is None:
        return (1.0, 1.0)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise ValueError(f"--scale-jitter must be LO,HI (e.g. 0.6,1.6), got {text!r}")
    try:  # the sampler's own check, here before any image is read
        return check_scale_jitter(values)
    except ValueError:
        raise ValueError(f"--scale-jitter must be LO,HI with 0 < LO <= HI, got {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    from .io import load_pairs, pairs_pixel_size
    from .model.data import check_blur
    from .model.train import TrainConfig
    from .progress import drain
    from .workflows.training import iter_train, model_paths

    out, best, ckpt = model_paths(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    # A new run (not --resume) starts its best epoch and checkpoint afresh: an earlier run's
    # are replaced only when asked (the best epoch was deleted unsaid).
    earlier = [str(f) for f in (best, ckpt) if f.exists()] if not args.resume else []
    if earlier and not args.overwrite:
        raise FileExistsError(f"an earlier run's {' and '.join(earlier)} exist: pass --resume to continue "
                              "it, or --overwrite to start again and replace them")
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    val_band = _band(args.val_band) if args.val_band else None
    for flag, share in (("--scale-p", args.scale_p), ("--blur-p", args.blur_p),
                        ("--synthetic-fraction", args.synthetic_fraction)):
        if not 0 <= share <= 1:
            raise ValueError(f"{flag} must be a share of the patches in [0, 1], got {share}")
    try:  # the sampler's own check, here before any image is read
        check_blur(args.blur, args.blur_p)
    except ValueError:
        raise ValueError(f"--blur must be 0 (off) or a sigma of at least 0.5 px, got {args.blur}") from None
    cfg = TrainConfig(epochs=args.epochs, patch=args.patch, batch=args.batch, lr=args.lr,
                      steps_per_epoch=args.steps_per_epoch, loss=args.loss, seed=args.seed,
                      class_weights=tuple(float(w) for w in args.class_weights.split(",")),
                      device=args.device, threads=args.threads, precision=args.precision, ema=args.ema,
                      contact_weight=args.contact_weight, seed_target=args.seed_target,
                      touch_class=args.touch_class, time_budget_s=60.0 * args.minutes,
                      freeze_norm=args.freeze_norm, scale_jitter=_scale_jitter(args.scale_jitter),
                      scale_p=args.scale_p, blur=args.blur, blur_p=args.blur_p,
                      synthetic_fraction=args.synthetic_fraction)
    pixel_size = args.pixel_size
    if pixel_size is None:  # what the images' files state (a model trained at 0.5 for 0.25 µm images halves them)
        pixel_size = pairs_pixel_size(args.images, args.masks)
        if pixel_size is not None:
            print(f"pixel size {pixel_size:g} µm, from the images' metadata")
    pairs = load_pairs(args.images, args.masks, args.channel)
    live = sys.stderr.isatty()  # a live bar in a terminal, nothing in logs

    def show(p) -> None:
        if p.unit == "steps":
            if live:
                bar = "#" * int(30 * p.done / max(p.total, 1))
                print(f"\r  [{bar:<30s}] step {p.done}/{p.total}", end="", file=sys.stderr, flush=True)
            return
        if live and p.info is not None:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
        print(p.message, flush=True)

    result = drain(iter_train(
        pairs, out, init=args.init, config=cfg, val_fraction=args.val_fraction,
        val_band=val_band, synthetic=args.synthetic, synthetic_nuclei=args.synthetic_nuclei,
        pixel_size=pixel_size,
        channels=[int(c) for c in args.channels.split(",")], resume=args.resume,
        overwrite=args.overwrite), show)
    print(f"saved {result.path}" + (f" (best epoch by validation: {result.best})" if result.best else ""))
    start = result.info.extra.get("start_val_mAP")
    if start is not None and result.best is None:
        print(f"note: no epoch beat the starting model {args.init!r} on the validation strips (its val AP "
              f"{start:.3f}); it may be the better model for these images")
    return 0


def _band(text: str) -> tuple[int, int]:
    """``"K/N"`` (1-based, as a user counts bands) -> ``(K - 1, N)``."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--val-band must look like 2/5 (band 2 of 5), got {text!r}") from None
    if not (n >= 2 and 1 <= k <= n):
        raise ValueError(f"--val-band {text}: need at least 2 bands and 1 <= K <= N")
    return k - 1, n


def _add_noise_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noise-sweep", help="cell count of the classic pipeline against noise")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=50, help="images per noise level")
    p.add_argument("--levels", default="0.05,0.10,0.15,0.20,0.25", help="noise levels (sd), comma-separated")
    p.add_argument("--overwrite", action="store_true")


def _noise_sweep(args: argparse.Namespace) -> int:
    from .io import check_can_write
    from .sweep import noise_sweep, plot_sweep

    csv = check_can_write(args.out / "noise_sweep.csv", args.overwrite)
    png = check_can_write(args.out / "noise_sweep.png", args.overwrite)
    levels = tuple(float(v) for v in args.levels.split(","))
    df, failing = noise_sweep(levels=levels, n_images=args.n)
    df.to_csv(csv, index=False)
    plot_sweep(df, failing, png)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("the pipeline starts to fail at noise "
          + (f"{failing:.2f}" if failing is not None else "> the largest level tried"))
    print(f"wrote {csv} and {png}")
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write the synthetic sample images (and truth) to a folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")


def _sample(args: argparse.Namespace) -> int:
    from .sample_data import write_samples

    for path in write_samples(args.out, overwrite=args.overwrite):
        print(path)
    return 0


def _add_segment_large(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment-large", help="segment a whole slide block by block on dask.distributed; "
                                             "writes OUT.zarr (multiscale labels) and OUT.zarr/cells.csv")
    p.add_argument("image", help="a zarr array, an OME-Zarr image or a (tiled) TIFF, 2-D")
    p.add_argument("--out", type=Path, required=True, help="output zarr folder")
    p.add_argument("--block", type=int, default=4096, help="block side in px (default 4096)")
    p.add_argument("--halo", type=int, default=64, help="context around a block in px; doubled where a "
                                                        "cell reaches it (default 64)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, help="local workers (default: one per core, fewer when memory is short: ~3 GiB each)")
    g.add_argument("--scheduler", default=None, help="join a dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--resume", action="store_true", help="finish a run found at --out (same settings)")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--pixel-size", type=float, default=None, help="µm per pixel; must be the model's")
    p.add_argument("--model", default=None, help=_model_help(auto=False))
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--sensitivity", type=float, default=None, help="seed sensitivity 0-100")
    p.add_argument("--h-probability", type=float, default=None, help="dip between two seeds, 0-1")
    p.add_argument("--cell-threshold", type=float, default=None, help="cell probability threshold")


def _segment_large(args: argparse.Namespace) -> int:
    from .workflows.large import segment_large

    if args.out.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{args.out} exists; pass --resume to finish it or --overwrite to start again")

    # segment --zarr also passes --seed-split / --h: refused block-wise with a reason, not ignored
    names = ("sensitivity", "h_probability", "cell_threshold", "seed_split", "h")
    params = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}

    def show(p) -> None:
        print(f"\r  {p.text()}", end="", file=sys.stderr, flush=True)

    result = segment_large(args.image, args.out, block=args.block, halo=args.halo, resume=args.resume,
                           overwrite=args.overwrite, pixel_size=args.pixel_size, model=args.model,
                           workers=args.workers, scheduler=args.scheduler, device=args.device,
                           progress=show, **params)
    print(file=sys.stderr)
    healed = f", {len(result.healed)} healed with a wider halo" if result.healed else ""
    print(f"{result.n_cells} cells in {result.n_blocks} blocks ({len(result.computed)} computed, "
          f"{len(result.skipped)} already done{healed}) in {result.seconds:.1f} s -> {result.path}, "
          f"{result.table_path}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a (striped or tiled) TIFF slide to OME-Zarr, band by band "
                                       "(for segment --zarr / segment-large and napari)")
    p.add_argument("image", type=Path, help="a TIFF: 2-D grey or RGB(A) (one channel is kept)")
    p.add_argument("--out", type=Path, required=True, help="the OME-Zarr folder to write")
    p.add_argument("--chunk", type=int, default=1024, help="chunk side in px (default 1024)")
    p.add_argument("--channel", type=int, default=None, help="RGB channel to keep (default: the one with signal)")
    p.add_argument("--pixel-size", type=float, default=None, help="µm per pixel (default: the TIFF's metadata)")
    p.add_argument("--overwrite", action="store_true", help="replace --out")


def _convert(args: argparse.Namespace) -> int:
    from .workflows.convert import convert_to_zarr

    def show(p) -> None:
        print(f"\r  {p.text()}", end="", file=sys.stderr, flush=True)

    r = convert_to_zarr(args.image, args.out, chunk=args.chunk, channel=args.channel,
                        pixel_size=args.pixel_size, overwrite=args.overwrite, progress=show)
    print(file=sys.stderr)
    size = f"{r.pixel_size:g} µm/px" if r.pixel_size else "no pixel size"
    chan = f", channel {r.channel}" if r.channel is not None else ""
    print(f"{r.shape[0]} x {r.shape[1]} {r.dtype}{chan}, {r.levels} levels, {size} -> {r.path}")
    return 0


COMMANDS = {
    "segment": (_add_segment, _segment),
    "segment-large": (_add_segment_large, _segment_large),
    "convert": (_add_convert, _convert),
    "evaluate": (_add_evaluate, _evaluate),
    "train": (_add_train, _train),
    "noise-sweep": (_add_noise_sweep, _noise_sweep),
    "sample": (_add_sample, _sample),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-cellseg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("napari_cellseg").setLevel(logging.INFO)
    try:
        return COMMANDS[args.command][1](args)
    except (OSError, ValueError, RuntimeError, MemoryError, ArithmeticError) as err:
        # OSError: missing, existing, unreadable or unwritable files, a full disk;
        # ArithmeticError: a model that produced NaN. Each says what went wrong.
        print(f"napari-cellseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # A cluster's own errors (distributed.KilledWorker: a worker killed again and again,
        # e.g. out of memory) are no bug of ours, and deserve words, not a traceback.
        if type(err).__module__.split(".")[0] != "distributed":
            raise
        try:
            text = str(err)
        except Exception:  # a cluster error whose own message fails (it reads a worker's state)
            text = ", ".join(map(str, err.args))
        print(f"napari-cellseg {args.command}: error: the dask cluster failed: {type(err).__name__}: {text} "
              "(a worker out of memory? try fewer workers, smaller blocks or --resume)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
