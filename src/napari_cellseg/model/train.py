"""Training and fine-tuning the 3-class UNet on image / instance-mask pairs.

The loop is a generator: it yields one record per epoch (losses, validation scores)
and returns the history, so the CLI prints it, the viewer shows it from a worker and
the tests drain it. Per-step progress goes to a plain callback.
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

from ..core.preprocess import percentile_normalize
from .inference import choose_device, cpu_bf16
from .store import ModelInfo, save_model
from .targets import (
    BACKGROUND,
    CONTACT,
    contact_lines,
    encode_soft_seeds,
    make_targets,
    target_probabilities,
)
from .unet import UNet, UNetConfig

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
    class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # seed, cytoplasm, background
    synthetic_fraction: float = 0.2  # share of patches from synthetic whole-cell images
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"  # "auto" (bfloat16 where native: CPU AVX-512 BF16 / AMX, CUDA), "bf16", "fp32"
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: off
    seed_target: str = "hard"  # "hard" (depth > 0.5) or "soft" (graded by depth; see targets.py)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    """One training image: normalised intensities, class targets, instance labels."""

    image: np.ndarray  # (M, N) float32, percentile-normalised
    target: np.ndarray  # (M, N) uint8 training code (targets.py): class index, CONTACT or SOFT + seed share
    labels: np.ndarray | None = None  # (M, N) int instance labels (for validation)
    name: str = ""


def make_example(
    image: np.ndarray,
    labels: np.ndarray,
    nucleus_labels: np.ndarray | None = None,
    name: str = "",
    normalize: tuple[float, float] = (1.0, 99.8),
    seed_target: str = "hard",
) -> Example:
    """Normalise an image and build its 3-class target, with the background between two
    cells marked ``CONTACT`` (the loss counts it as background, weighted). ``seed_target``
    "soft": graded seeds where no nucleus labels are given (``targets.encode_soft_seeds``)."""
    if seed_target not in ("hard", "soft"):
        raise ValueError(f"seed_target must be 'hard' or 'soft', got {seed_target!r}")
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape != labels.shape:
        raise ValueError(f"{name or 'image'}: image shape {image.shape} differs from its "
                         f"mask shape {labels.shape}")
    target = make_targets(labels, nucleus_labels)
    target[contact_lines(labels) & (target == BACKGROUND)] = CONTACT
    if seed_target == "soft" and nucleus_labels is None:
        target = encode_soft_seeds(target, labels)
    return Example(percentile_normalize(image, *normalize), target, labels.astype(np.int32), name)


def split_pair(
    image: np.ndarray, labels: np.ndarray, fraction: float = 0.2, name: str = "", **example_kwargs
) -> tuple[Example, Example | None]:
    """Examples of the left part of an image (training) and of the right ``fraction`` of
    its columns (validation), as the dense-tissue paper holds out a right-hand strip;
    ``fraction`` 0: the whole image for training and no validation part (None).

    Each part is normalised on its own, as a held-out image would be, so that the
    validation AP printed while training is the figure ``benchmarks/accuracy_dense.py``
    reports for the same strips. ``example_kwargs`` go to :func:`make_example`.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return make_example(image, labels, name=name, **example_kwargs), None
    image, labels = np.asarray(image), np.asarray(labels)
    cut = round(image.shape[1] * (1 - fraction))
    left = make_example(image[:, :cut], labels[:, :cut], name=name, **example_kwargs)
    right = make_example(image[:, cut:], labels[:, cut:], name=f"{name}_val", **example_kwargs)
    return left, right


def synthetic_examples(n: int, seed: int = 0, size: int = 256) -> list[Example]:
    """Whole-cell synthetic images (both stains, a range of cell sizes) as examples."""
    from ..core.synthetic import make_whole_cell_image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = make_whole_cell_image(
            seed=int(rng.integers(1 << 31)),
            shape=(size, size),
            cell_radius=float(rng.uniform(5.5, 10.0)),
            density=float(rng.uniform(0.45, 0.95)),
            stain="membrane" if i % 2 == 0 else "cytoplasm",
            noise_scale=float(rng.uniform(0.02, 0.1)),
        )
        out.append(make_example(scene.image, scene.labels, scene.nucleus_labels, f"synthetic{i}"))
    return out


def _augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """90-degree rotations, flips, gain / offset / gamma jitter and extra noise.

    No arbitrary-angle rotation: the dense-tissue paper found it hurts.
    """
    k = int(rng.integers(4))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    x = np.clip(x, 0, None) ** gamma
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.05, 0.05)
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.01, 0.06), size=x.shape)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


class PatchSampler:
    """Random patches from a set of examples (real and synthetic)."""

    def __init__(
        self,
        real: Sequence[Example],
        synthetic: Sequence[Example] = (),
        patch: int = 176,
        synthetic_fraction: float = 0.2,
    ):
        self.real = [e for e in real if min(e.image.shape) >= 8]
        self.synthetic = list(synthetic)
        if not self.real and not self.synthetic:
            raise ValueError("no training images")
        self.patch = patch
        self.synthetic_fraction = synthetic_fraction if self.synthetic else 0.0
        if not self.real:
            self.synthetic_fraction = 1.0
        # Pick real images in proportion to their area.
        areas = np.array([e.image.size for e in self.real], dtype=float)
        self.weights = areas / areas.sum() if len(areas) else areas

    def _crop(self, rng: np.random.Generator, e: Example) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        h, w = e.image.shape
        x = np.zeros((p, p), np.float32)
        y = np.full((p, p), BACKGROUND, np.uint8)
        r0 = int(rng.integers(0, max(h - p, 0) + 1))
        c0 = int(rng.integers(0, max(w - p, 0) + 1))
        ph, pw = min(p, h), min(p, w)
        x[:ph, :pw] = e.image[r0 : r0 + ph, c0 : c0 + pw]
        y[:ph, :pw] = e.target[r0 : r0 + ph, c0 : c0 + pw]
        return x, y

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(n):
            if rng.random() < self.synthetic_fraction:
                e = self.synthetic[int(rng.integers(len(self.synthetic)))]
            else:
                e = self.real[int(rng.choice(len(self.real), p=self.weights))]
            x, y = _augment(rng, *self._crop(rng, e))
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys).astype(np.int64))


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
    counted ``contact_weight`` times) and graded seeds (``SOFT`` codes: a probability
    target ``[s, 1 - s, 0]``). Both losses are pixel-weighted means; with one-hot targets
    the cross-entropy is torch's class-weighted mean.
    """
    if kind not in ("ce", "rmsd"):
        raise ValueError(f"loss must be 'ce' or 'rmsd', got {kind!r}")
    if margin:
        logits = logits[..., margin:-margin, margin:-margin]
        target = target[..., margin:-margin, margin:-margin]
    probs_t = target_probabilities(target, logits.shape[1]).to(logits.dtype)
    pixel_w = torch.where(target == CONTACT, float(contact_weight), 1.0).to(logits.dtype)
    if kind == "ce":
        cw = weights.to(logits.dtype)[None, :, None, None] * probs_t
        nll = -(cw * torch.log_softmax(logits, dim=1)).sum(dim=1)
        return (nll * pixel_w).sum() / (cw.sum(dim=1) * pixel_w).sum()
    prob = torch.softmax(logits, dim=1)
    w = (pixel_w / pixel_w.sum())[:, None]
    per_class = torch.sqrt((w * (prob - probs_t) ** 2).sum(dim=(0, 2, 3)) + 1e-12)
    total = torch.sqrt((w[:, 0] * (prob.sum(dim=1) - 1.0) ** 2).sum() + 1e-12)
    return (weights * per_class).sum() / weights.sum() + total


@dataclass
class TrainState:
    """What a resumed run needs."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_score: float = -math.inf


def train(
    model: UNet,
    train_examples: Sequence[Example],
    val_examples: Sequence[Example] = (),
    config: TrainConfig | None = None,
    synthetic: Sequence[Example] = (),
    validate: Callable[[UNet], dict[str, float]] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[dict, None, TrainState]:
    """Train ``model`` in place; yield one record per epoch, return the final state.

    Parameters
    ----------
    model : UNet
    train_examples, val_examples : sequences of Example
    config : TrainConfig
    synthetic : sequence of Example
        Synthetic images mixed in at ``config.synthetic_fraction``.
    validate : callable, optional
        ``validate(model) -> dict`` run after each epoch (e.g. AP after segmentation);
        its ``"score"`` entry, else minus the validation loss, picks the best epoch.
    on_step : callable, optional
        ``on_step(step, steps_per_epoch)`` after each optimisation step.
    checkpoint : path, optional
        Where the training state is saved after every epoch (``.ckpt``), for resuming.
    resume : bool
        Continue from ``checkpoint`` when it exists.
    should_stop : callable, optional
        Polled between steps; True ends training after the current step.
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
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    sampler = PatchSampler(train_examples, synthetic, cfg.patch, cfg.synthetic_fraction)
    state = TrainState()
    ckpt = Path(checkpoint) if checkpoint else None
    if resume and ckpt and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if ema is not None and "ema" in saved:
            ema.load_state_dict(saved["ema"])
        state = TrainState(int(saved["epoch"]), json.loads(saved["history"]), float(saved["best_score"]))
        rng = np.random.default_rng([cfg.seed, state.epoch])
        torch.manual_seed(cfg.seed + state.epoch)
        logger.info("resumed from %s at epoch %d", ckpt, state.epoch)
    val_batches = _validation_batches(val_examples, cfg.patch)

    while state.epoch < cfg.epochs:
        t0 = time.perf_counter()
        torch.set_grad_enabled(True)  # grad mode is per thread; a worker thread may inherit it off
        model.train()
        losses = []
        for step in range(cfg.steps_per_epoch):
            x, y = sampler.sample(rng, cfg.batch)
            x, y = x.to(device).to(memory_format=torch.channels_last), y.to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = loss_fn(logits.float(), y, weights, cfg.loss, cfg.margin, cfg.contact_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged at epoch {state.epoch + 1}, "
                                         f"step {step + 1} (loss {loss.item()}); lower the learning rate")
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            if on_step:
                on_step(step + 1, cfg.steps_per_epoch)
            if should_stop and should_stop():
                break
        sched.step()
        state.epoch += 1
        record = {"epoch": state.epoch, "train_loss": float(np.mean(losses)),
                  "lr": opt.param_groups[0]["lr"]}
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
        score = record.get("score", -record.get("val_loss", record["train_loss"]))
        record["best"] = score > state.best_score
        if record["best"]:
            state.best_score = score
        state.history.append(record)
        if ckpt:
            _save_checkpoint(ckpt, model.state_dict() if raw is None else raw, opt, sched, state, ema)
        yield record
        if should_stop and should_stop():
            break
        if raw is not None and state.epoch < cfg.epochs:
            model.load_state_dict(raw)
    return state


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
        **extra,
    }, tmp)
    tmp.replace(path)


def new_model(channels: Sequence[int] | None = None, init: str | Path | None = None) -> tuple[UNet, ModelInfo]:
    """A fresh UNet, or one initialised from saved weights for fine-tuning."""
    if init is not None:
        from .store import load_model

        model, info = load_model(init)
        return model, info
    config = UNetConfig(channels=tuple(channels)) if channels else UNetConfig()
    return UNet(config), ModelInfo(config=config)


def save_trained(path: str | Path, model: UNet, info: ModelInfo, history: list[dict],
                 train_config: TrainConfig, overwrite: bool = False) -> Path:
    """Save weights with the training record in their metadata."""
    info.extra = {**info.extra, "train_config": train_config.to_dict(),
                  "history_tail": history[-3:], "epochs_run": len(history)}
    return save_model(path, model, info, overwrite=overwrite)


def load_pairs(
    images: str | Path, masks: str | Path, channel: int | None = None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Image / mask pairs from two folders, matched by name (``x_img.png`` with
    ``x_masks.png``, ``x.tif`` with ``x_labels.tif`` ...). A file without a partner is
    an error that names it."""
    from ..io import list_images, pair_stem, read_image, read_labels

    img_files = {pair_stem(p): p for p in list_images(images)}
    mask_files = {pair_stem(p): p for p in list_images(masks)}
    if Path(images).resolve() == Path(masks).resolve():
        # One folder holding both: images are the files that are not masks.
        img_files = {pair_stem(p): p for p in list_images(images)
                     if not p.stem.endswith(("_masks", "_mask", "_labels"))}
        mask_files = {pair_stem(p): p for p in list_images(masks)
                      if p.stem.endswith(("_masks", "_mask", "_labels"))}
    missing = sorted(set(img_files) ^ set(mask_files))
    if missing:
        raise ValueError(f"images and masks do not pair up; without a partner: {missing}")
    if not img_files:
        raise ValueError(f"no images found in {images}")
    out = []
    for stem in sorted(img_files):
        out.append((stem, read_image(img_files[stem], channel), read_labels(mask_files[stem])))
    return out


def iter_finetune(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    name: str,
    init: str | Path | None = None,
    config: TrainConfig | None = None,
    val_fraction: float = 0.2,
    folder: str | Path | None = None,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[dict, None, Path]:
    """Fine-tune (or train from scratch) on image / label pairs and save a named model.

    Yields one record per epoch (train loss, validation loss and AP on the held-out
    right-hand strip of each image); returns the saved model's path, which the Predict
    and Segment widgets then list. The model is saved as ``<folder>/<name>.safetensors``
    (default folder: the user model folder), never over an existing one unless asked.
    """
    from .registry import WEIGHTS_SUFFIX, user_model_dir

    if not name or any(c in name for c in "/\\:"):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '-' or '_'")
    path = Path(folder or user_model_dir()) / f"{name}{WEIGHTS_SUFFIX}"
    if path.exists() and not overwrite:
        raise FileExistsError(f"a model named {name!r} exists at {path}; choose another name")
    if not pairs:
        raise ValueError("no training images")
    model, info = new_model(init=init) if init is not None else new_model()
    info.extra["val_fraction"] = val_fraction  # as `napari-cellseg train` records it
    cfg = config or TrainConfig(epochs=10, steps_per_epoch=20, batch=8, lr=3e-4 if init else 1e-3)
    train_ex, val_ex = [], []
    for i, (image, labels) in enumerate(pairs):
        labels = np.asarray(labels)
        if labels.max() == 0:
            raise ValueError(f"training pair {i + 1} has no labelled cell")
        image = np.asarray(image)
        kwargs = {"name": f"pair{i + 1}", "seed_target": cfg.seed_target}
        # An image under 64 px is too small to give up a strip: all of it is trained on.
        t, v = split_pair(image, labels, val_fraction if min(image.shape[:2]) >= 64 else 0, **kwargs)
        train_ex.append(t)
        if v is not None:
            val_ex.append(v)
    patch = min(cfg.patch, *(min(e.image.shape) for e in train_ex))
    patch = max(patch - patch % model.config.divisor, model.config.divisor * 2)
    cfg = TrainConfig(**{**cfg.to_dict(), "patch": patch, "margin": min(cfg.margin, patch // 8)})

    def validate(m):
        from ..pipeline import validation_scores

        return validation_scores(m, info, val_ex) if val_ex else {}

    history = []
    gen = train(model, train_ex, val_ex, cfg, validate=validate, should_stop=should_stop)
    for record in gen:
        history.append(record)
        yield record
    return save_trained(path, model, info, history, cfg, overwrite=overwrite)
