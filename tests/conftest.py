from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("NAPARI_CELLSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DENSE = SHARED / "data" / "dense_tcells" / "train"


@pytest.fixture
def dense_dir() -> Path:
    if not DENSE.is_dir():
        pytest.skip(f"the dense T-cell set is not at {DENSE} (set NAPARI_CELLSEG_SHARED to the "
                    "folder that holds data/dense_tcells)")
    return DENSE


@pytest.fixture
def tiny_model():
    """A tiny, untrained UNet and its info: fast enough for every test."""
    torch = pytest.importorskip("torch")
    from napari_cellseg.model.store import ModelInfo
    from napari_cellseg.model.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(channels=(4, 8, 16), dropout=0.0)
    return UNet(config).eval(), ModelInfo(config=config, pixel_size=0.5)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def kill_busy_worker():
    """``kill(client, pids, prefix) -> (pid, keys)``: SIGKILL a worker that is running a
    task whose key starts with ``prefix``; returns its pid and the keys it was running."""
    import os
    import signal

    def kill(client, pids: dict, prefix: str) -> tuple[int, list[str]]:
        busy = {a: [str(k) for k in keys if str(k).startswith(prefix)]
                for a, keys in client.processing().items()}
        address = next((a for a, keys in busy.items() if keys), None)
        assert address is not None, f"no {prefix} task in flight: {busy}"
        os.kill(pids[address], signal.SIGKILL)
        return pids[address], busy[address]

    return kill
