"""Training a model from image / label pairs: the one workflow behind both the
``napari-cellseg train`` command and the Train widget.

It splits off validation strips, mixes in synthetic images, fits the patch to small
images, validates by AP after segmentation, keeps the best epoch beside the last,
checkpoints and resumes, and records in the saved model what inference needs to use it
at the right scale: the pixel size and the measured median cell diameter of the
training labels (the minimum cell area and the LoG scales derive from it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..core.labels import relabel
from ..core.params import Grid, SegmentParams
from ..core.preprocess import rescale, scale_factor
from ..core.validate import finite_positive, label_image, rescale_factor
from ..model.data import Example, median_cell_diameter, split_band, split_pair, synthetic_examples
from ..model.inference import choose_device
from ..model.store import WEIGHTS_SUFFIX, ModelInfo
from ..model.train import TrainConfig, new_model, save_trained, train
from ..progress import Progress

logger = logging.getLogger(__name__)

MIN_SPLIT_SIDE = 64  # an image smaller than this gives up no validation strip
# What a fine-tune keeps of its start model's metadata: its segmentation defaults, the
# image pixel size of a 2x model, and whether its touch class was added by a fine-tune.
INHERITED_RECORDS = ("segment_defaults", "image_pixel_size", "touch_class_added")
DEFAULT_PIXEL_SIZE = 0.5  # µm, when neither the user nor the initial model gives one
# Segmentation defaults in µm that describe the initial model's cells, not the new ones.
_SIZE_DEFAULTS = ("cell_diameter", "min_cell_area", "seed_diameter")


class TrainResult(NamedTuple):
    """What a training run leaves: the saved model (the last epoch, or the best with
    ``keep_best``), the best epoch's file (None without validation, or when no epoch of a
    fine-tune beat the starting model; the saved model itself with ``keep_best``), every
    epoch's record and the saved ModelInfo."""

    path: Path
    best: Path | None
    history: list[dict]
    info: ModelInfo


def model_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """The files of a run saving to ``out``: the model, its best epoch
    (``<out>.best.safetensors``) and its checkpoint (``<out>.ckpt``)."""
    out = Path(out)
    if out.suffix != WEIGHTS_SUFFIX:
        out = out.with_name(out.name + WEIGHTS_SUFFIX)
    stem = out.name[: -len(WEIGHTS_SUFFIX)]
    return out, out.with_name(f"{stem}.best{WEIGHTS_SUFFIX}"), out.with_name(f"{stem}.ckpt")


def iter_train(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    out: str | Path,
    *,
    init: str | Path | None = None,
    config: TrainConfig | None = None,
    val_fraction: float = 0.2,
    val_band: tuple[int, int] | None = None,
    synthetic: int = 0,
    synthetic_nuclei: int = 0,
    pixel_size: float | None = None,
    channels: Sequence[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    keep_best: bool = False,
) -> Generator[Progress, None, TrainResult]:
    """Train (or fine-tune) a model on image / label pairs and save it to ``out``.

    Parameters
    ----------
    pairs : sequence of (name, (M, N) ndarray, (M, N) int ndarray)
        Images and their instance labels; each needs at least one labelled cell.
    out : path
        The model file (``.safetensors`` is appended when missing). The best epoch by
        validation AP goes beside it (``<out>.best.safetensors``), the training state to
        ``<out>.ckpt`` after every epoch.
    init : str or path, optional
        A model name or file to fine-tune; None: a new network (``channels`` wide).
    config : TrainConfig, optional
        Its ``patch`` shrinks to fit images smaller than it.
    val_fraction : float
        The right-hand strip of each image kept for validation, in [0, 1); 0 (or an image
        under 64 px) trains on every pixel. With no validation the last epoch is saved
        and there is no best file.
    val_band : (k, n), optional
        Spatial cross-validation instead of ``val_fraction``: vertical band ``k`` of ``n``
        of each image is held out and validated on, the columns either side train (cells
        cut by the band's edges are ignored by the loss; ``model.data.split_band``).
    synthetic : int
        Synthetic whole-cell images mixed in (``config.synthetic_fraction`` of patches).
    synthetic_nuclei : int
        Synthetic images of nuclei in a DNA stain added to them
        (``model.data.synthetic_examples``).
    pixel_size : float, optional
        µm per pixel of the images; default the initial model's (the images are used at
        their own scale), else 0.5. A 2x model (``image_pixel_size`` in its metadata)
        keeps its network's grid: the images are resampled onto it from this pixel size
        (default its ``image_pixel_size``), which it records as its images'.
    resume : bool
        Continue from ``<out>.ckpt`` when it exists.
    overwrite : bool
        Replace an existing ``out``.
    keep_best : bool
        Save the best epoch as ``out`` instead of the last, and no separate best file
        (the Train widget). ``info.extra["kept_epoch"]`` says which epoch it is.

    A fine-tune with validation first scores the starting model on the held-out part
    (``info.extra["start_val_mAP"]``; not after a resume): an epoch is "best" only if it
    beats it, so with ``keep_best`` a fine-tune that never does saves the last epoch and
    says so (``kept_epoch`` None). A run that does not resume first removes a best file
    left at ``out`` by an earlier run.

    Yields
    ------
    Progress
        First ``Progress(0, epochs, "epochs")`` whose message describes the run; then
        :func:`~napari_cellseg.model.train.train`'s per-step and per-epoch progress.

    Returns
    -------
    TrainResult

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    ValueError
        No pairs, a pair without a labelled cell, shapes that differ, or
        ``val_fraction`` outside [0, 1).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    for what, count in (("synthetic", synthetic), ("synthetic_nuclei", synthetic_nuclei)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"{what} must be a number of images (an integer >= 0), got {count!r}")
    if pixel_size is not None:
        pixel_size = finite_positive(pixel_size, "pixel_size")
    out, best, ckpt = model_paths(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another name or allow overwriting")
    if not pairs:
        raise ValueError("no training images")
    cfg = config or TrainConfig()
    checked = []
    for name, image, labels in pairs:
        # Ids 1..K: targets and validation index arrays by id (an id of 2e7 took 500 MB, one
        # of 2**32 + 7 wrapped onto cell 7 in int32).
        labels = label_image(labels, f"labels of training pair {name!r}", whole_floats=True)
        if labels.max(initial=0) == 0:
            raise ValueError(f"training pair {name!r} has no labelled cell")
        checked.append((name, image, relabel(labels)))
    pairs = checked
    import torch

    torch.manual_seed(cfg.seed)  # a model from scratch starts from the seed's weights: runs repeat
    model, info = new_model(channels, init=init, touch_class=cfg.touch_class)
    if init is not None:
        # What describes the network carries over; the start model's run records (its
        # held-out band, starting score, kept epoch, source file) would pass for this run's.
        info.extra = {k: v for k, v in info.extra.items() if k in INHERITED_RECORDS}
    from ..pipeline import image_pixel_size

    images_px = image_pixel_size(info)
    zoom, shapes = 1.0, [list(np.shape(labels)) for _, _, labels in pairs]
    if images_px is not None:
        # A 2x model runs its network on a finer grid than its images (inference upsamples
        # them): the pairs are brought onto that grid, images linearly and labels by nearest
        # neighbour, by the resampling inference uses (preprocess.rescale). Its recipe
        # (benchmarks/cv_dense.py, x2_scratch) used scipy's zoom, whose grid is aligned on
        # the corner pixels instead: the two differ by under a pixel. The model keeps its
        # grid; the images' pixel size becomes the user's.
        images_px = pixel_size or images_px
        zoom = scale_factor(images_px, info.pixel_size)
        for _, image, _ in pairs:  # a pixel size in nm, say, is refused in words, not resampled
            rescale_factor(zoom, np.shape(image), images_px, info.pixel_size)
        pairs = [(name, rescale(np.asarray(image, np.float32), zoom), rescale(np.asarray(labels), zoom, order=0))
                 for name, image, labels in pairs]
    train_ex, val_ex, all_labels, unlabelled_val = [], [], [], []
    for (name, image, labels), shape in zip(pairs, shapes, strict=True):
        image, labels = np.asarray(image), np.asarray(labels)
        # Measured on the user's image, not on a 2x model's upsampled copy of it.
        fraction = val_fraction if min(shape[:2]) >= MIN_SPLIT_SIDE else 0
        banded = val_band is not None and fraction
        if banded:
            parts, v = split_band(image, labels, val_band, name=name, seed_target=cfg.seed_target)
        else:
            t, v = split_pair(image, labels, fraction, name=name, seed_target=cfg.seed_target)
            parts = [t]
        if v is not None and not v.labels.any():
            # A held-out part without a labelled cell scores AP 0 at every epoch (any cell
            # found there is a false positive), which would pick the best epoch blindly: it
            # is not scored. A right-hand strip trains with the rest instead; a CV band
            # stays out of training.
            unlabelled_val.append(str(name))
            v = None
            if not banded:
                parts = [split_pair(image, labels, 0, name=name, seed_target=cfg.seed_target)[0]]
        train_ex.extend(parts)
        if v is not None:
            val_ex.append(v)
        all_labels.append(labels)
    cfg = _fit_patch(cfg, train_ex, model.config.divisor)
    _record_units(info, all_labels, None if images_px is not None else pixel_size)
    info.extra["trained_on"] = [
        {"name": str(name), "shape": shape, "cells": int(len(np.unique(labels)) - (labels == 0).any())}
        for (name, _, _), shape, labels in zip(pairs, shapes, all_labels, strict=True)]
    if images_px is not None:
        info.extra["image_pixel_size"] = float(images_px)
        info.extra["trained_at_zoom"] = zoom  # the images upsampled onto the network's grid
    if init is not None:
        from ..model.store import model_record

        info.extra["fine_tuned_from"] = {k: v for k, v in model_record(init).items() if k != "path"}
    # What was held out: a benchmark must know whether its strips were trained on (0 when
    # every image was too small to give one up).
    info.extra["val_fraction"] = val_fraction if val_ex or val_band is not None else 0.0
    if unlabelled_val:
        info.extra["no_validation_cells"] = unlabelled_val  # trained whole (or their band left out)
    if val_band is not None:
        info.extra["val_band"] = list(val_band)
    synth = (synthetic_examples(synthetic, seed=cfg.seed, nuclei=synthetic_nuclei)
             if synthetic or synthetic_nuclei else [])
    if synth:  # what the model saw besides the user's images
        info.extra["synthetic_images"] = {"whole_cell": int(synthetic), "nuclei": int(synthetic_nuclei)}

    if not val_ex and unlabelled_val:
        held_out = f"no validation (no labelled cell in the held-out part of {', '.join(unlabelled_val)})"
    elif not val_ex:
        held_out = "every pixel trained on, no validation"
    elif unlabelled_val:
        part = f"band {val_band[0] + 1} of {val_band[1]}" if val_band is not None else "the held-out part"
        held_out = (f"validating on {part} in {len(val_ex)} of {len(pairs)} images (no labelled cell in "
                    f"{part} of {', '.join(unlabelled_val)})")
    elif val_band is not None:
        held_out = f"validating on band {val_band[0] + 1} of {val_band[1]} of {len(val_ex)}"
    elif len(val_ex) == len(train_ex):
        held_out = f"validating on the right {val_fraction:.0%} of each"
    else:
        held_out = (f"validating on the right {val_fraction:.0%} of {len(val_ex)} "
                    f"(the others are under {MIN_SPLIT_SIDE} px)")
    yield Progress(0, cfg.epochs, "epochs", message=(
        f"training on {len(pairs)} images (+{len(synth)} synthetic), {held_out}; "
        f"{cfg.epochs} epochs x {cfg.steps_per_epoch} steps x batch {cfg.batch}; "
        f"median cell diameter {info.cell_diameter_um:.1f} µm at {info.pixel_size:g} µm/px"))

    def validate(m):
        return validation_scores(m, info, val_ex)

    resuming = resume and ckpt.exists()
    # The run a checkpoint belongs to: a resume with other images, another start model or
    # other settings would continue (or, finished, simply return) a different training.
    stamp = ckpt.with_name(ckpt.name + ".json")
    run_id = _run_fingerprint(pairs, init, cfg, channels, val_fraction, val_band, synthetic, synthetic_nuclei)
    if resuming and stamp.exists() and json.loads(stamp.read_text()).get("run") != run_id:
        raise ValueError(f"{ckpt} is the checkpoint of another run (other images, start model or "
                         "settings): not resumed; start again without resume (--resume), or delete it")
    if not resuming:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"run": run_id}))
        best.unlink(missing_ok=True)  # an earlier run's: it would pass for this one's
    baseline = -math.inf
    if init is not None and val_ex and not resuming:
        model.to(choose_device(cfg.device))  # scored where (and in the precision) the epochs will be
        if cfg.threads:  # and on as many threads (train() sets them again)
            import torch

            torch.set_num_threads(cfg.threads)
        start = validate(model)["score"]
        info.extra["start_val_mAP"] = baseline = start
        yield Progress(0, cfg.epochs, "epochs", message=f"the starting model scores val AP {start:.3f}; "
                       "an epoch must beat it to be kept as the best")
    def save_best(m, history):  # without validation there is no best epoch to keep
        save_trained(best, m, info, history, cfg, overwrite=True)

    gen = train(model, train_ex, val_ex, cfg, synth, validate=validate if val_ex else None,
                checkpoint=ckpt, resume=resume, baseline=baseline, on_best=save_best if val_ex else None)
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                state = stop.value
                break
            yield p
    finally:
        gen.close()  # cancelled: the loop stops now and leaves the model in eval mode
    if resuming and math.isfinite(state.baseline):  # the start was scored before the resume
        info.extra["start_val_mAP"] = state.baseline
    best_epochs = [r["epoch"] for r in state.history if r.get("best")]
    best_file = best if val_ex and best_epochs and best.exists() else None
    if not keep_best:
        save_trained(out, model, info, state.history, cfg, overwrite=True)
        return TrainResult(out, best_file, state.history, info)
    if val_ex:
        info.extra["kept_epoch"] = best_epochs[-1] if best_file else None
    if best_file is not None:
        from ..model.store import load_model

        model.load_state_dict(load_model(best_file)[0].state_dict())
    save_trained(out, model, info, state.history, cfg, overwrite=True)
    if best_file is not None:
        best_file.unlink()  # the saved model is that epoch: no second copy in the model list
    return TrainResult(out, out if best_file is not None else None, state.history, info)


def _run_fingerprint(pairs, init, cfg: TrainConfig, channels, val_fraction, val_band, synthetic,
                     synthetic_nuclei) -> str:
    """SHA-256 of what makes a training run itself: the images and labels (their bytes),
    the start model's weights, the architecture and the settings. Left out: the number of
    epochs (a resume may train longer), the device, threads, precision and time budget
    (a resume may run elsewhere)."""
    import hashlib

    h = hashlib.sha256()
    for name, image, labels in pairs:
        h.update(str(name).encode())
        for a in (np.ascontiguousarray(image), np.ascontiguousarray(labels)):
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
    if init is not None:
        from ..model.store import model_record

        h.update(str(model_record(init).get("sha256")).encode())
    settings = {k: v for k, v in cfg.to_dict().items()
                if k not in ("epochs", "device", "threads", "precision", "time_budget_s")}
    h.update(json.dumps([settings, list(channels) if channels else None, val_fraction,
                         list(val_band) if val_band is not None else None, synthetic, synthetic_nuclei],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def annotated_region(labels: np.ndarray, margin: int = 16, min_side: int = 64) -> tuple[slice, slice]:
    """The box around every labelled pixel, grown by ``margin`` px and to at least
    ``min_side`` px where the image allows: the part of an image a user annotated (one
    crop, or a few cells) to fine-tune on. Every cell inside it must be labelled, since
    unlabelled pixels in it are taught as background.

    Raises
    ------
    ValueError
        No labelled pixel.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"annotated region: expected 2-D labels, got shape {labels.shape}")
    found = ndi.find_objects((labels > 0).astype(np.uint8))
    if not found:
        raise ValueError("the labels layer has no labelled cell: annotate the cells of a region first")
    box = []
    for sl, n in zip(found[0], labels.shape, strict=True):
        lo, hi = max(sl.start - margin, 0), min(sl.stop + margin, n)
        side = min(min_side, n)
        if hi - lo < side:  # centred on the annotation, inside the image
            lo = max(0, min((lo + hi) // 2 - side // 2, n - side))
            hi = lo + side
        box.append(slice(lo, hi))
    return box[0], box[1]


def _fit_patch(cfg: TrainConfig, examples: Sequence[Example], divisor: int) -> TrainConfig:
    """The config with its patch no larger than the smallest training image (a multiple
    of the network's divisor, at least two), and a margin that leaves the patch a
    loss-bearing centre."""
    patch = min(cfg.patch, *(min(e.image.shape) for e in examples))
    patch = max(patch - patch % divisor, divisor * 2)
    if patch >= cfg.patch:
        return cfg
    return TrainConfig(**{**cfg.to_dict(), "patch": patch, "margin": min(cfg.margin, patch // 8)})


def _record_units(info: ModelInfo, labels: Sequence[np.ndarray], pixel_size: float | None) -> None:
    """Set the pixel size (the user's, else the initial model's, else 0.5 µm) and the
    training labels' median cell diameter in µm; drop size defaults inherited from an
    initial model, which describe its cells and not these."""
    info.pixel_size = float(pixel_size or info.pixel_size or DEFAULT_PIXEL_SIZE)
    diameter_px = median_cell_diameter(labels)
    info.cell_diameter_um = diameter_px * info.pixel_size
    info.extra["cell_diameter_px"] = diameter_px
    defaults = info.extra.get("segment_defaults")
    if defaults:
        info.extra["segment_defaults"] = {k: v for k, v in defaults.items() if k not in _SIZE_DEFAULTS}


def validation_scores(model, info: ModelInfo, examples: Sequence[Example],
                      params: SegmentParams | None = None) -> dict[str, float]:
    """AP at IoU 0.5 after seeds and watershed on normalised validation examples (picks
    the best epoch while training).

    Parameters
    ----------
    model : UNet
        Scored on the device it is on; its fused inference copy is built once for all
        the examples (``inference_copy`` caches it until the weights change).
    info : ModelInfo
        Pixel size and cell diameter of the examples' grid; ``segment_defaults`` from its
        metadata unless ``params`` are given.
    examples : sequence of Example
        With ``labels``.

    Returns
    -------
    dict
        ``val_mAP`` and ``score`` (the same value), the mean AP over the examples.
    """
    from ..core.metrics import evaluate
    from ..model.inference import predict_probabilities
    from ..pipeline import Prediction

    if params is None:  # the model's tuned defaults when it has them, else the library's
        params = SegmentParams.from_mapping(info.extra.get("segment_defaults"))
    grid = Grid(info.pixel_size or DEFAULT_PIXEL_SIZE, info.cell_diameter_um)
    device = next(model.parameters()).device
    aps = []
    for e in examples:
        probs = predict_probabilities(model, e.image, normalize=None, device=device)
        cells, _ = Prediction(e.image, probs, e.image, grid, params).segment_grid()
        aps.append(evaluate(e.labels, cells).ap)
    score = float(np.mean(aps))
    return {"val_mAP": score, "score": score}
