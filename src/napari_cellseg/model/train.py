"""The training loop and its loss: train or fine-tune the 3-class UNet on examples.

:func:`train` is a generator in the project's progress protocol (``progress.py``): it
yields a :class:`~napari_cellseg.progress.Progress` after every optimisation step and
one per epoch (whose ``info`` is the epoch's record: losses, validation scores) and
returns the :class:`TrainState`. A consumer cancels by no longer iterating. Examples,
splits and patches are ``data.py``'s; the whole workflow (validation by AP, best epoch,
the saved model's units) is ``workflows/training.py``'s.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..progress import Progress
from .data import Example, PatchSampler
from .inference import autocast, choose_device, cpu_bf16
from .store import ModelInfo, save_model
from .targets import CONTACT, IGNORE, TOUCH, target_probabilities
from .unet import CLASSES, UNet, UNetConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings; the defaults are the paper's where it gives them."""

    epochs: int = 50
    patch: int = 176  # patch side; the inner patch - 2 * margin counts in the loss
    margin: int = 8  # context border excluded from the loss (176 -> inner 160)
    batch: int = 32
    lr: float = 1e-3
    steps_per_epoch: int = 50
    loss: str = "ce"  # "ce" (class-weighted cross-entropy) or "rmsd" (the paper's)
    contact_weight: float = 1.0  # loss weight of the background between two cells (1: plain)
    class_weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # seed, cytoplasm, background[, touch]
    synthetic_fraction: float = 0.2  # share of patches from synthetic whole-cell images
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"  # "auto" (bfloat16 where native: CPU AVX-512 BF16 / AMX, CUDA), "bf16", "fp32"
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: off
    seed_target: str = "hard"  # "hard" (depth > 0.5) or "soft" (graded by depth; see targets.py)
    touch_class: bool = False  # a new network gets a 4th output: where two cells touch (targets.py)
    # Seconds of training allowed (0: no limit). The learning-rate schedule is fitted to the
    # epochs that the first one says will fit, and training stops after the epoch that would
    # leave no room for another (or mid-epoch, past the limit); the record says so.
    time_budget_s: float = 0.0
    # Batch-norm statistics frozen at the initial model's (its layers in eval mode while the
    # weights train): a fine-tune on one crop would otherwise replace them with that crop's.
    freeze_norm: bool = False
    # Zoom augmentation (data.PatchSampler): with probability scale_p a patch is drawn at a
    # zoom log-uniform in scale_jitter (cells that much larger); (1, 1): off.
    scale_jitter: tuple[float, float] = (1.0, 1.0)
    scale_p: float = 0.5
    # Blur augmentation (data.PatchSampler): with probability blur_p a patch's image is
    # blurred, sigma uniform in [0.5, blur] px; 0: off.
    blur: float = 0.0
    blur_p: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


def loss_fn(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, kind: str = "ce", margin: int = 0,
    contact_weight: float = 1.0,
) -> torch.Tensor:
    """Training loss on the inner part of the patch (``margin`` px of context dropped).

    ``"ce"``: class-weighted cross-entropy. ``"rmsd"``: the paper's loss, the
    class-weighted root-mean-square difference between each class probability and its
    target, plus RMSD(sum of the three probabilities, 1); with a softmax output that
    second term is zero, and it is kept for fidelity. Targets are training codes (see
    ``targets.target_probabilities``): class indices, ``CONTACT`` pixels (background
    counted ``contact_weight`` times), ``IGNORE`` pixels (no weight) and graded seeds (``SOFT`` codes: a probability
    target ``[s, 1 - s, 0]``). Both losses are pixel-weighted means; with one-hot targets
    the cross-entropy is torch's class-weighted mean.
    """
    if kind not in ("ce", "rmsd"):
        raise ValueError(f"loss must be 'ce' or 'rmsd', got {kind!r}")
    if margin:
        logits = logits[..., margin:-margin, margin:-margin]
        target = target[..., margin:-margin, margin:-margin]
    probs_t = target_probabilities(target, logits.shape[1]).to(logits.dtype)
    # With 3 classes the touching line is background, weighted as the other contacts.
    contact = (target == CONTACT) | ((target == TOUCH) & (logits.shape[1] == 3))
    pixel_w = torch.where(contact, float(contact_weight), 1.0).to(logits.dtype)
    pixel_w = pixel_w * (target != IGNORE)
    if kind == "ce":
        cw = weights.to(logits.dtype)[None, :, None, None] * probs_t
        nll = -(cw * torch.log_softmax(logits, dim=1)).sum(dim=1)
        # A batch of ignored pixels only (possible in a narrow part of a band split) has loss 0.
        return (nll * pixel_w).sum() / (cw.sum(dim=1) * pixel_w).sum().clamp_min(1e-6)
    prob = torch.softmax(logits, dim=1)
    w = (pixel_w / pixel_w.sum().clamp_min(1e-6))[:, None]
    per_class = torch.sqrt((w * (prob - probs_t) ** 2).sum(dim=(0, 2, 3)) + 1e-12)
    total = torch.sqrt((w[:, 0] * (prob.sum(dim=1) - 1.0) ** 2).sum() + 1e-12)
    return (weights * per_class).sum() / weights.sum() + total


def class_weights(cfg: TrainConfig, n_classes: int) -> tuple[float, ...]:
    """One loss weight per output class: ``cfg.class_weights``, with the touch class of a
    4-class model weighted as the cytoplasm when only three are given."""
    w = tuple(float(v) for v in cfg.class_weights)
    if len(w) == 3 and n_classes == 4:
        w = (*w, w[1])
    if len(w) != n_classes:
        raise ValueError(f"{len(w)} class weights for a model with {n_classes} classes")
    return w


@dataclass
class TrainState:
    """What a resumed run needs."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_score: float = -math.inf
    baseline: float = -math.inf  # the score an epoch had to beat (a fine-tune's start)


def train(
    model: UNet,
    train_examples: Sequence[Example],
    val_examples: Sequence[Example] = (),
    config: TrainConfig | None = None,
    synthetic: Sequence[Example] = (),
    validate: Callable[[UNet], dict[str, float]] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    baseline: float = -math.inf,
    on_best: Callable[[UNet, list[dict]], None] | None = None,
) -> Generator[Progress, None, TrainState]:
    """Train ``model`` in place, yielding progress; return the final state.

    Parameters
    ----------
    model : UNet
    train_examples, val_examples : sequences of Example
        ``val_examples`` give the validation loss (fixed tiles of ``config.patch``).
    config : TrainConfig
    synthetic : sequence of Example
        Synthetic images mixed in at ``config.synthetic_fraction``.
    validate : callable, optional
        ``validate(model) -> dict`` run after each epoch (e.g. AP after segmentation);
        its ``"score"`` entry, else minus the validation loss, picks the best epoch.
    checkpoint : path, optional
        Where the training state is saved after every epoch (``.ckpt``), for resuming.
    resume : bool
        Continue from ``checkpoint`` when it exists.
    baseline : float
        The score an epoch must beat to be ``best`` (a fine-tune: the starting model's);
        a resumed run keeps its checkpoint's best score and baseline.
    on_best : callable, optional
        ``on_best(model, history)`` after a best epoch, before its checkpoint is written
        (save the best weights there: a run stopped in between then resumes consistent).

    Yields
    ------
    Progress
        After each optimisation step ``Progress(step, steps_per_epoch, "steps")``; after
        each epoch ``Progress(epoch, epochs, "epochs", info=record)``, the record holding
        ``epoch``, ``train_loss``, ``lr``, ``val_loss`` (with validation examples), what
        ``validate`` returned, ``seconds`` and ``best``. Between epochs the model holds the
        weights the record describes (the moving average with ``config.ema``) in eval mode.

    Returns
    -------
    TrainState
        Epochs run, their records and the best score.

    Notes
    -----
    Closing the generator (a cancelled worker) stops training at once and leaves the
    model in eval mode; no yield happens inside a grad-mode or autocast context, so the
    thread's grad mode is never left changed.
    """
    cfg = config or TrainConfig()
    device = choose_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    bf16 = _use_bf16(cfg.precision, device)
    # channels-last: oneDNN's fast convolution layout on the CPU (2.5x with bfloat16 here)
    model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ema = None
    if cfg.ema:
        if not 0 < cfg.ema < 1:
            raise ValueError(f"ema must be in (0, 1), got {cfg.ema}")
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1), eta_min=cfg.lr * 0.05)
    weights = torch.tensor(class_weights(cfg, model.config.n_classes), dtype=torch.float32, device=device)
    sampler = PatchSampler(train_examples, synthetic, cfg.patch, cfg.synthetic_fraction,
                           tuple(cfg.scale_jitter), cfg.scale_p, cfg.blur, cfg.blur_p)
    state = TrainState(best_score=float(baseline), baseline=float(baseline))
    ckpt = Path(checkpoint) if checkpoint else None
    if resume and ckpt and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if ema is not None and "ema" in saved:
            ema.load_state_dict(saved["ema"])
        state = TrainState(int(saved["epoch"]), json.loads(saved["history"]), float(saved["best_score"]),
                           float(saved.get("baseline", -math.inf)))
        rng = np.random.default_rng([cfg.seed, state.epoch])
        torch.manual_seed(cfg.seed + state.epoch)
        logger.info("resumed from %s at epoch %d", ckpt, state.epoch)
    val_batches = _validation_batches(val_examples, cfg.patch)
    steps = cfg.steps_per_epoch
    budget = float(cfg.time_budget_s or 0.0)
    if budget < 0 or not math.isfinite(budget):
        raise ValueError(f"time budget must be a positive number of seconds (0: none), got {cfg.time_budget_s}")
    started = time.perf_counter()

    try:
        while state.epoch < cfg.epochs:
            t0 = time.perf_counter()
            epoch = state.epoch + 1
            model.train()
            if cfg.freeze_norm:
                for m in model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()
            losses = []
            for step in range(steps):
                if budget and step and time.perf_counter() - started > budget:
                    break  # out of time mid-epoch: this epoch ends here
                losses.append(_step(model, opt, sampler, rng, weights, cfg, device, bf16, epoch, step))
                if ema is not None:
                    ema.update_parameters(model)
                yield Progress(step + 1, steps, "steps",
                               message=f"epoch {epoch}/{cfg.epochs}, step {step + 1}/{steps}")
            sched.step()
            state.epoch = epoch
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"]}
            raw = None
            if ema is not None:
                # Between epochs the caller sees (validates, saves) the averaged weights;
                # training resumes from the raw ones.
                raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(ema.module.state_dict())
            model.eval()
            if val_batches:
                record["val_loss"] = _validation_loss(model, val_batches, weights, cfg, device)
            if validate is not None:
                record.update(validate(model))
            record["seconds"] = time.perf_counter() - t0
            if len(losses) < steps:
                record["steps"] = len(losses)
            stop = False
            if budget:
                elapsed = time.perf_counter() - started
                if epoch == 1:  # the cosine schedule ends with the epochs that fit
                    sched.T_max = max(1, min(cfg.epochs, int(budget // max(record["seconds"], 1e-3))))
                if state.epoch < cfg.epochs and (elapsed + record["seconds"] > budget or epoch >= sched.T_max):
                    record["stopped"] = f"time budget of {budget:.0f} s"
                    stop = True
            score = record.get("score", -record.get("val_loss", record["train_loss"]))
            record["best"] = score > state.best_score
            if record["best"]:
                state.best_score = score
            state.history.append(record)
            if record["best"] and on_best is not None:
                on_best(model, state.history)
            if ckpt:
                _save_checkpoint(ckpt, model.state_dict() if raw is None else raw, opt, sched, state, ema)
            yield Progress(epoch, cfg.epochs, "epochs", message=epoch_line(record, cfg.epochs), info=record)
            if stop:
                logger.info("stopped after epoch %d of %d: %s", epoch, cfg.epochs, record["stopped"])
                break
            if raw is not None and state.epoch < cfg.epochs:
                model.load_state_dict(raw)
    finally:
        # Cancelled mid-epoch or finished: the model is left for inference, not training.
        model.eval()
    return state


def _step(model, opt, sampler, rng, weights, cfg: TrainConfig, device, bf16: bool, epoch: int, step: int) -> float:
    """One optimisation step on a fresh batch; returns its loss. Grad mode is switched on
    here and only here (it is per thread, and a worker thread may inherit it off)."""
    x, y = sampler.sample(rng, cfg.batch)
    x, y = x.to(device).to(memory_format=torch.channels_last), y.to(device)
    opt.zero_grad(set_to_none=True)
    with torch.enable_grad():
        with autocast(device.type, torch.bfloat16, bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y, weights, cfg.loss, cfg.margin, cfg.contact_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at epoch {epoch}, step {step + 1} "
                                     f"(loss {loss.item()}); lower the learning rate")
        loss.backward()
    opt.step()
    return loss.item()


def epoch_line(record: dict, epochs: int) -> str:
    """One line for an epoch's record: ``epoch   3/10  loss 0.2301  val_loss 0.180  val_mAP
    0.512  37s  *`` (the star: best so far)."""
    extra = "".join(f"  {k} {record[k]:.3f}" for k in ("val_loss", "val_mAP") if k in record)
    return (f"epoch {record['epoch']:3d}/{epochs}  loss {record['train_loss']:.4f}{extra}  "
            f"{record['seconds']:.0f}s{'  *' if record['best'] else ''}")


def _use_bf16(precision: str, device: torch.device) -> bool:
    """bfloat16 autocast for training: where the hardware has it natively, under "auto"."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cpu":
        return cpu_bf16()
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _validation_batches(examples: Sequence[Example], patch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, non-overlapping validation tiles (the same every epoch)."""
    out = []
    for e in examples:
        h, w = e.image.shape
        for r in range(0, h - patch + 1, patch):
            for c in range(0, w - patch + 1, patch):
                x = torch.from_numpy(np.ascontiguousarray(e.image[r : r + patch, c : c + patch]))[None, None]
                y = torch.from_numpy(e.target[r : r + patch, c : c + patch].astype(np.int64))[None]
                out.append((x, y))
    return out


@torch.inference_mode()
def _validation_loss(model, batches, weights, cfg, device) -> float:
    total = 0.0
    for i in range(0, len(batches), 16):
        x = torch.cat([b[0] for b in batches[i : i + 16]]).to(device)
        y = torch.cat([b[1] for b in batches[i : i + 16]]).to(device)
        total += loss_fn(model(x), y, weights, cfg.loss, cfg.margin, cfg.contact_weight).item() * len(x)
    return total / len(batches)


def _save_checkpoint(path: Path, weights: dict, opt, sched, state: TrainState, ema=None) -> None:
    """``weights``: the raw (not averaged) model state, which a resumed run continues from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    extra = {"ema": ema.state_dict()} if ema is not None else {}
    torch.save({
        "model": weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "epoch": state.epoch, "history": json.dumps(state.history), "best_score": state.best_score,
        "baseline": state.baseline, **extra,
    }, tmp)
    tmp.replace(path)


def new_model(channels: Sequence[int] | None = None, init: str | Path | None = None,
              touch_class: bool = False) -> tuple[UNet, ModelInfo]:
    """A fresh UNet (3 classes, or 4 with the touch class), or one initialised from saved
    weights for fine-tuning, which keeps its classes (``touch_class`` asks for 4)."""
    n_classes = 4 if touch_class else 3
    if init is not None:
        from .store import load_model

        model, info = load_model(init)
        if touch_class and model.config.n_classes == 3:
            model, info = add_touch_class(model, info)
        return model, info
    config = UNetConfig(channels=tuple(channels), n_classes=n_classes) if channels else UNetConfig(n_classes=n_classes)
    return UNet(config), ModelInfo(config=config)


def add_touch_class(model: UNet, info: ModelInfo, offset: float = 4.0) -> tuple[UNet, ModelInfo]:
    """The same network with a 4th output, "touch", for fine-tuning a 3-class model into one
    with the touch class (the line where two cells touch was "background" to it).

    The touch output starts as a copy of the background output with its logit lowered by
    ``offset``, so the new model first predicts what the old one did (touch probability
    about e^-4 of background's) and training moves the contact lines over. (Hand-written:
    resizing a head is a few lines of tensor copies, not a library's job.)
    """
    import dataclasses

    config = dataclasses.replace(model.config, n_classes=4)
    grown = UNet(config)
    state = model.state_dict()
    w, b = state["head.weight"], state["head.bias"]  # (3, C, 1, 1), (3,)
    bg = CLASSES.index("background")
    state["head.weight"] = torch.cat([w, w[bg:bg + 1]], dim=0)
    state["head.bias"] = torch.cat([b, b[bg:bg + 1] - offset], dim=0)
    grown.load_state_dict(state)
    info = dataclasses.replace(info, config=config, extra={**info.extra, "touch_class_added": True})
    return grown, info


def save_trained(path: str | Path, model: UNet, info: ModelInfo, history: list[dict],
                 train_config: TrainConfig, overwrite: bool = False) -> Path:
    """Save weights with the training record in their metadata."""
    info.extra = {**info.extra, "train_config": train_config.to_dict(),
                  "history_tail": history[-3:], "epochs_run": len(history)}
    return save_model(path, model, info, overwrite=overwrite)


