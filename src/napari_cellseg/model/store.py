"""Saving and loading model weights (safetensors, metadata in the header)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .registry import (  # noqa: F401  (re-exported: the store's public names)
    DEFAULT_MODEL,
    WEIGHTS_SUFFIX,
    _notify_saved,
    available_models,
    builtin_models,
    on_model_saved,
    resolve_model_path,
    user_model_dir,
)
from .unet import UNet, UNetConfig

logger = logging.getLogger(__name__)

@dataclass
class ModelInfo:
    """What inference needs to know beside the weights."""

    config: UNetConfig = field(default_factory=UNetConfig)
    pixel_size: float | None = 0.5  # µm per pixel of the training images
    cell_diameter_um: float = 7.5  # typical cell diameter in the training images
    normalize: tuple[float, float] = (1.0, 99.8)  # percentiles mapped to 0 and 1
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {
            "napari_cellseg": json.dumps({
                "config": self.config.to_dict(),
                "pixel_size": self.pixel_size,
                "cell_diameter_um": self.cell_diameter_um,
                "normalize": list(self.normalize),
                "extra": self.extra,
            })
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None) -> ModelInfo:
        if not meta or "napari_cellseg" not in meta:
            raise ValueError("the weight file has no napari-cellseg metadata (architecture, "
                             "pixel size); it was not saved by napari-cellseg")
        try:
            d = json.loads(meta["napari_cellseg"])
            pixel_size = d.get("pixel_size")
            if pixel_size is not None and (isinstance(pixel_size, bool) or not isinstance(pixel_size, int | float)):
                raise TypeError(f"pixel_size {pixel_size!r} is not a number")
            info = cls(
                config=UNetConfig.from_dict(d["config"]),
                pixel_size=None if pixel_size is None else float(pixel_size),
                cell_diameter_um=float(d.get("cell_diameter_um", 7.5)),
                normalize=tuple(float(v) for v in d.get("normalize", (1.0, 99.8))),
                extra=d.get("extra", {}),
            )
            if len(info.normalize) != 2 or not isinstance(info.extra, dict):
                raise TypeError("normalize must be two percentiles and extra a mapping")
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # json.JSONDecodeError is a ValueError
            # Damaged metadata (edited by hand, written by another tool) is said as such.
            what = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"the weight file's napari-cellseg metadata is damaged ({what}); "
                             "re-save or re-train the model") from err
        return info


def save_model(path: str | Path, model: UNet, info: ModelInfo, overwrite: bool = False) -> Path:
    """Write weights and metadata to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        path = path.with_name(path.name + WEIGHTS_SUFFIX)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    info.config = model.config
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_finite(state, path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={**info.to_metadata(), CHECKSUM_KEY: weights_checksum(state)})
    tmp.replace(path)  # never leave a half-written model under the real name
    path.chmod(0o644)  # safetensors writes 0600; a shipped or shared model must be readable
    _notify_saved()
    return path


def load_model(model: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[UNet, ModelInfo]:
    """Load a model by name or path, in eval mode on ``device``.

    Raises
    ------
    FileNotFoundError
        No such model.
    ValueError
        The file is corrupt, not a napari-cellseg model, or its tensors do not fit the
        architecture its metadata names.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = resolve_model_path(model)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"cannot read model weights from {path}: the file is corrupt or not "
                         f"a safetensors file ({err})") from err
    try:
        info = ModelInfo.from_metadata(meta)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    saved_sum = (meta or {}).get(CHECKSUM_KEY)
    if saved_sum is not None and saved_sum != weights_checksum(state):
        raise ValueError(f"the weights in {path} are corrupt: their checksum does not match the "
                         "one saved with them; reinstall or re-save the model")
    _check_finite(state, path)
    net = UNet(info.config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        raise ValueError(f"the weights in {path} do not match the architecture its metadata names "
                         f"({info.config}): {details or err}") from err
    return net.to(device).eval(), info


CHECKSUM_KEY = "napari_cellseg_sha256"


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, type, shape and bytes, in name order."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"the weights in {path} hold NaN or infinite values ({', '.join(bad[:3])}"
                         f"{' ...' if len(bad) > 3 else ''}): the model is broken; reinstall it or "
                         "train it again")


def resolve_model(model=None) -> tuple[UNet, ModelInfo]:
    """Any way of naming a model -> ``(UNet, ModelInfo)``: the one place that tells them apart.

    Parameters
    ----------
    model : None, str, Path or (UNet, ModelInfo)
        None: the shipped default model; a name (shipped or saved in the user folder) or
        a weight file; a loaded pair, returned as it is.

    Returns
    -------
    (UNet, ModelInfo)
        A file's model is loaded once (kept while the file is unchanged, for the last
        few files) on the CPU in eval mode, so that repeated predictions reuse it and its
        fused inference copy. It is shared: do not train or modify it; use
        :func:`load_model` for a private copy. The ModelInfo is a fresh copy each call.

    Raises
    ------
    TypeError
        A UNet without its ModelInfo, or anything else that names no model.
    FileNotFoundError, ValueError
        As :func:`load_model`.
    """
    if isinstance(model, tuple):
        if len(model) == 2 and isinstance(model[0], UNet) and isinstance(model[1], ModelInfo):
            return model
        raise TypeError(f"a loaded model is a (UNet, ModelInfo) pair, got a tuple of "
                        f"{[type(m).__name__ for m in model]}")
    if isinstance(model, UNet):
        raise TypeError("pass a loaded model with its ModelInfo, as (net, info) from load_model()")
    if model is not None and not isinstance(model, (str, Path)):
        raise TypeError(f"model must be None, a name, a path or a (UNet, ModelInfo) pair, "
                        f"got {type(model).__name__}")
    import copy

    path = resolve_model_path(model).resolve()
    stat = path.stat()
    # The inode too: a file re-saved (atomically, by a rename) within one tick of a coarse
    # file-system clock, at the same size, is still another file.
    key = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    with _LOADED_LOCK:
        hit = _LOADED.pop(key, None)
    if hit is None:
        hit = load_model(path, device="cpu")
    with _LOADED_LOCK:
        _LOADED[key] = hit  # most recently used last
        for old in list(_LOADED)[:-_LOADED_MAX]:
            del _LOADED[old]
    net, info = hit
    return net, copy.deepcopy(info)


# (path, mtime, size) -> (UNet, ModelInfo): the last few models loaded by resolve_model
_LOADED: dict[tuple, tuple[UNet, ModelInfo]] = {}
_LOADED_MAX = 4
_LOADED_LOCK = threading.Lock()


def model_record(model) -> dict:
    """The model a result was made with: name, weight file and the SHA-256 of its
    tensors saved in the file (None for a file saved before checksums, or a model
    passed in memory)."""
    if isinstance(model, tuple):  # a loaded (UNet, ModelInfo) pair: no file behind it
        return {"name": None, "path": None, "sha256": None}
    path = resolve_model_path(model)
    names = [name for name, p in available_models().items() if Path(p) == path]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {"name": names[0] if names else path.stem, "path": str(path),
            "sha256": meta.get(CHECKSUM_KEY)}
