"""Where models live, without importing torch: the shipped ones inside the package, the
user's fine-tuned ones in ~/.napari-cellseg/models. The widgets list models from here."""

from __future__ import annotations

import weakref
from importlib import resources
from pathlib import Path

WEIGHTS_SUFFIX = ".safetensors"
DEFAULT_MODEL = "dense_tcells_multiscale"
# The model name that asks for the choice by look (choose.py): reserved, never a model's.
AUTO_MODEL = "auto"

# Callbacks run after a model is saved, so that open model lists (the widgets') refresh.
_saved_listeners: list[weakref.ref] = []


def on_model_saved(callback) -> None:
    """Call ``callback()`` after every save; held weakly (a closed widget is dropped)."""
    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else weakref.ref(callback)
    _saved_listeners.append(ref)


def _notify_saved() -> None:
    for ref in list(_saved_listeners):
        cb = ref()
        if cb is None:
            _saved_listeners.remove(ref)
        else:
            cb()


def builtin_models() -> dict[str, Path]:
    """Models shipped inside the package: name -> weight file."""
    folder = resources.files("napari_cellseg.model") / "weights"
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(WEIGHTS_SUFFIX):
            out[entry.name[: -len(WEIGHTS_SUFFIX)]] = Path(str(entry))
    return dict(sorted(out.items()))


def user_model_dir() -> Path:
    """Where models fine-tuned in the viewer are saved (listed beside the built-in ones):
    ``$NAPARI_CELLSEG_MODELS``, else ``~/.napari-cellseg/models``."""
    import os

    env = os.environ.get("NAPARI_CELLSEG_MODELS")
    # ~ expanded and made absolute: a launcher's "~/models" or a relative path would move
    # with the folder napari was started from, and saved models seem to vanish.
    return Path(env).expanduser().resolve() if env else Path.home() / ".napari-cellseg" / "models"


def available_models() -> dict[str, Path]:
    """Built-in models, then the user's saved models (a user model never hides a built-in)."""
    models = builtin_models()
    folder = user_model_dir()
    if folder.is_dir():
        for p in sorted(folder.glob(f"*{WEIGHTS_SUFFIX}")):
            name = p.name[: -len(WEIGHTS_SUFFIX)]
            if name.casefold() != AUTO_MODEL:  # the automatic choice's name: not listed
                models.setdefault(name, p)
    return models


def resolve_model_path(model: str | Path | None) -> Path:
    """A model name (built-in or user) or a path -> the weight file."""
    if model is None:
        model = DEFAULT_MODEL
    models = available_models()
    if isinstance(model, str) and model == AUTO_MODEL:  # never a model's name (available_models)
        # predict chooses a model per image (choose.py); anything else needs one named.
        raise ValueError("'auto' chooses a model per image when segmenting one image or a batch; "
                         f"name a model here (built in: {sorted(builtin_models())})")
    if isinstance(model, str) and model in models:
        return models[model]
    path = Path(model)
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"no model {str(model)!r}: not a file, and not one of the available models "
        f"{sorted(models)}"
    )




def user_model_path(name: str, folder: str | Path | None = None) -> Path:
    """Where a model saved under ``name`` goes: ``<folder>/<name>.safetensors``, the
    folder defaulting to :func:`user_model_dir` (so that the model lists show it).

    Raises
    ------
    ValueError
        ``name`` is empty, holds a path separator or is a built-in model's (saved under
        it, the model could never be loaded by its name: the built-in one wins).
    """
    name = (name or "").strip()
    if not name or any(c in name for c in "/\\:"):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '-' or '_'")
    if name in builtin_models():
        raise ValueError(f"{name!r} is a built-in model's name: choose another name for yours")
    if name.casefold() == AUTO_MODEL:
        raise ValueError("'auto' asks for the automatic choice of a model: choose another name for yours")
    if name.endswith(".best"):  # <x>.best.safetensors is the best epoch of a run saving to x
        raise ValueError(f"{name!r}: names ending in '.best' are kept for a training run's best epoch")
    return Path(folder or user_model_dir()) / f"{name}{WEIGHTS_SUFFIX}"
