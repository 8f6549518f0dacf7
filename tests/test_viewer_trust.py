"""Trust in the viewer and in the files: readable errors from every button, defaults
that cannot score a layer against itself, samples that open at once, widgets that keep
their width, and result files that record everything used."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellseg.sample_data import tissue_scene


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_CELLSEG_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def tissue():
    scene = tissue_scene()
    return scene.image[:128, :128], scene.labels[:128, :128]


# --- reproducibility: the params JSON of `napari-cellseg segment` -----------------------

def test_segment_params_json_records_everything_used(tmp_path, tissue):
    from napari_cellseg import __version__
    from napari_cellseg.cli import main
    from napari_cellseg.model.registry import DEFAULT_MODEL, resolve_model_path
    from napari_cellseg.model.store import CHECKSUM_KEY
    from napari_cellseg.pipeline import predict

    tifffile.imwrite(tmp_path / "crop.tif", tissue[0])
    assert main(["segment", str(tmp_path / "crop.tif"), "--out", str(tmp_path / "out"),
                 "--sensitivity", "40"]) == 0
    record = json.loads((tmp_path / "out" / "crop_params.json").read_text())
    pred = predict(tissue[0])
    expected = pred.params(sensitivity=40.0).to_dict()
    assert record["parameters"] == json.loads(json.dumps(expected))  # every value, not {}
    assert record["parameters"]["sensitivity"] == 40.0
    path = resolve_model_path(None)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        sha = f.metadata()[CHECKSUM_KEY]
    assert record["model"] == {"name": DEFAULT_MODEL, "path": str(path), "sha256": sha}
    assert len(sha) == 64
    # No pixel size given: the model's, which the image is taken to have (no rescale).
    assert record["pixel_size_um"] == pred.grid.pixel_size == 0.5
    assert record["pixel_size_given"] is False
    assert record["version"] == __version__
    table = pd.read_csv(tmp_path / "out" / "crop_cells.csv")
    assert len(table) == record["cells"] > 0
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.25)


def test_segment_params_json_with_a_given_pixel_size(tmp_path, tissue):
    from napari_cellseg.cli import main

    tifffile.imwrite(tmp_path / "crop.tif", tissue[0])
    assert main(["segment", str(tmp_path / "crop.tif"), "--out", str(tmp_path / "out"),
                 "--pixel-size", "0.4"]) == 0
    record = json.loads((tmp_path / "out" / "crop_params.json").read_text())
    assert record["pixel_size_um"] == 0.4 and record["pixel_size_given"] is True
    table = pd.read_csv(tmp_path / "out" / "crop_cells.csv")
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.16)
