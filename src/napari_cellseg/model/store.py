"""Saving and loading model weights (safetensors, metadata in the header)."""

from __future__ import annotations

import json
import logging
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
        d = json.loads(meta["napari_cellseg"])
        return cls(
            config=UNetConfig.from_dict(d["config"]),
            pixel_size=d.get("pixel_size"),
            cell_diameter_um=float(d.get("cell_diameter_um", 7.5)),
            normalize=tuple(d.get("normalize", (1.0, 99.8))),
            extra=d.get("extra", {}),
        )


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
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=info.to_metadata())
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
    info = ModelInfo.from_metadata(meta)
    net = UNet(info.config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the weights in {path} do not match the architecture "
                         f"{info.config}: {str(err).splitlines()[0]}") from err
    return net.to(device).eval(), info
