"""The model chosen by look when none is named (choose.py): the rule, what a result records,
once per stack, the batch's records and resume, and 'auto' refused where it cannot run."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

import napari_cellseg as ncs
from napari_cellseg import choose
from napari_cellseg.choose import DEFAULT_MODEL, MARGIN, NUCLEAR_MODEL, ModelChoice
from napari_cellseg.model.store import resolve_model
from napari_cellseg.progress import drain

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def tissue():
    return tifffile.imread(SAMPLES / "tissue.tif")[:256, :256].astype(np.float32)


@pytest.mark.parametrize(("default", "nuclear", "chosen"), [
    (0.700, 0.711, NUCLEAR_MODEL),  # surer by 0.011 >= MARGIN
    (0.700, 0.709, DEFAULT_MODEL),  # by 0.009: within the dense set's spread
    (0.800, 0.700, DEFAULT_MODEL),
    (0.0, 0.0, DEFAULT_MODEL),  # no crop showed cells
])
def test_the_rule_by_hand(default, nuclear, chosen):
    assert MARGIN == 0.01
    assert choose.decide({DEFAULT_MODEL: default, NUCLEAR_MODEL: nuclear}) == chosen


def test_the_candidates_share_one_grid():
    """A diameter or pixel size is turned into a zoom with the default's metadata before the
    choice: the candidates must agree on it, or the chosen one would run at a wrong zoom."""
    from napari_cellseg.pipeline import image_pixel_size

    infos = [resolve_model(name)[1] for name in choose.CANDIDATES]
    for info in infos[1:]:
        assert info.pixel_size == infos[0].pixel_size and info.cell_diameter_um == infos[0].cell_diameter_um
        assert image_pixel_size(info) == image_pixel_size(infos[0]) and info.normalize == infos[0].normalize


def test_a_blank_image_gets_the_default_and_says_nothing_was_measured():
    choice = choose.choose_model(np.zeros((200, 200), np.float32), 1.0, "cpu")
    assert choice.name == DEFAULT_MODEL and not choice.measured
    assert choice.scores == {DEFAULT_MODEL: 0.0, NUCLEAR_MODEL: 0.0}


def test_a_prediction_records_the_model_it_ran(tissue):
    # None and "auto" choose; the synthetic tissue (the dense look) keeps the default.
    for asked in (None, "auto"):
        pred = ncs.predict(tissue, 0.5, asked, "cpu")
        assert pred.model_name == pred.model_choice.name == DEFAULT_MODEL
        scores = pred.model_choice.scores
        assert set(scores) == {DEFAULT_MODEL, NUCLEAR_MODEL} and scores[DEFAULT_MODEL] > 0.5
        assert scores[NUCLEAR_MODEL] - scores[DEFAULT_MODEL] < MARGIN
        assert pred.model_choice.to_dict()["chosen"] == DEFAULT_MODEL
    named = ncs.predict(tissue, 0.5, NUCLEAR_MODEL, "cpu")
    assert named.model_name == NUCLEAR_MODEL and named.model_choice is None
    loaded = ncs.predict(tissue, 0.5, resolve_model(NUCLEAR_MODEL), "cpu")
    assert loaded.model_name is None and loaded.model_choice is None
    # A named model gives exactly what the choice gives when it picks that model.
    np.testing.assert_array_equal(ncs.predict(tissue, 0.5, DEFAULT_MODEL, "cpu").segment(),
                                  ncs.predict(tissue, 0.5, None, "cpu").segment())


def _always_nuclear(calls):
    real = choose.choose_model

    def fake(image, zoom=1.0, device="auto", tophat_px=None, memo=None):
        calls.append(float(np.ptp(image)))
        if np.ptp(image) == 0:
            return real(image, zoom, device)  # a blank plane: nothing measured
        return ModelChoice(NUCLEAR_MODEL, {DEFAULT_MODEL: 0.7, NUCLEAR_MODEL: 0.75}, zoom)

    return fake


def test_the_nuclear_model_chosen_estimates_the_scale_again_with_itself(tissue, monkeypatch):
    from napari_cellseg import pipeline

    calls, estimated_with = [], []
    monkeypatch.setattr(choose, "choose_model", _always_nuclear(calls))
    real_estimate = pipeline._estimate

    sentinel = object()

    def estimate(image, net, info, device, zooms=None, memo=None, instead=None, warned=None):
        estimated_with.append(net)
        if net is resolve_model(NUCLEAR_MODEL)[0]:
            # On the default's best rung only, not the whole ladder.
            assert zooms == (max(first[0].trials, key=lambda t: t[1])[0],)
            return 0.37, sentinel  # the nuclear model's own reading, distinct from the default's
        first.append(real_estimate(image, net, info, device)[1])
        return first[0].pixel_size, first[0]

    first = []

    monkeypatch.setattr(pipeline, "_estimate", estimate)
    pred = ncs.predict(tissue, "auto", None, "cpu")
    assert pred.model_name == NUCLEAR_MODEL and len(calls) == 1
    assert estimated_with == [resolve_model(DEFAULT_MODEL)[0], resolve_model(NUCLEAR_MODEL)[0]]
    assert pred.pixel_size == 0.37 and pred.scale is sentinel  # the second estimate is the one used
    # Given a pixel size, nothing is estimated: only the choice runs.
    estimated_with.clear()
    assert ncs.predict(tissue, 0.5, None, "cpu").model_name == NUCLEAR_MODEL
    assert estimated_with == []


def test_no_model_runs_twice_on_the_same_trial_crop(tissue, monkeypatch):
    """The estimate and the choice share their network passes (scale.trial_predictions'
    memo): the sample at the model's scale is chosen for at zoom 1, a rung the estimate ran,
    and the nuclear model, when chosen, estimates on that rung again."""
    import napari_cellseg.model.inference as inference

    real = inference.predict_probabilities
    passes = []
    monkeypatch.setattr(inference, "predict_probabilities", lambda net, crop, **kw: (
        passes.append((id(net), crop.shape, crop.tobytes())) or real(net, crop, **kw)))
    pred = ncs.predict(tissue, "auto", None, "cpu")
    assert pred.model_choice.zoom == 1.0 and pred.scale.zoom == 1.0
    assert len(passes) == len(set(passes))
    # The choice ran the nuclear model only on what the estimate had not: the default
    # model's passes at zoom 1 were reused (a fresh choice runs both).
    shared = len(passes)
    fresh = []
    monkeypatch.setattr(inference, "predict_probabilities", lambda net, crop, **kw: (
        fresh.append(id(net)) or real(net, crop, **kw)))
    choose.choose_model(tissue, 1.0, "cpu")
    per_model = len(fresh) // 2
    assert per_model >= 1 and fresh.count(id(resolve_model(NUCLEAR_MODEL)[0])) == per_model
    passes.clear()
    monkeypatch.setattr(inference, "predict_probabilities", lambda net, crop, **kw: (
        passes.append((id(net), crop.shape, crop.tobytes())) or real(net, crop, **kw)))
    monkeypatch.setattr(choose, "decide", lambda scores: NUCLEAR_MODEL)
    pred = ncs.predict(tissue, "auto", None, "cpu")
    assert pred.model_name == NUCLEAR_MODEL
    assert len(passes) == len(set(passes)) == shared  # its estimate on rung 1: all reused


def test_a_stack_chooses_once_by_its_first_plane_with_cells(tissue, monkeypatch):
    from napari_cellseg.pipeline import iter_predict_planes

    calls = []
    monkeypatch.setattr(choose, "choose_model", _always_nuclear(calls))
    stack = np.stack([np.zeros_like(tissue), tissue, tissue[::-1]])
    preds = drain(iter_predict_planes(stack, 0.5, None, "cpu"))
    # Plane 1 chose; plane 2 and the blank plane 0 (predicted again) ran the chosen model,
    # and every plane records the choice that set it.
    assert calls == [0.0, float(np.ptp(tissue))]
    assert [p.model_name for p in preds] == [NUCLEAR_MODEL] * 3
    assert all(p.model_choice is preds[1].model_choice for p in preds)


def test_a_stack_settles_scale_and_model_together(tissue, monkeypatch):
    """Both "auto": the first plane that measures both sets them for every plane."""
    from napari_cellseg.pipeline import iter_predict_planes

    calls = []
    monkeypatch.setattr(choose, "choose_model", _always_nuclear(calls))
    stack = np.stack([np.zeros_like(tissue), tissue, tissue[::-1]])
    preds = drain(iter_predict_planes(stack, "auto", None, "cpu"))
    assert [p.model_name for p in preds] == [NUCLEAR_MODEL] * 3
    sizes = {p.pixel_size for p in preds}
    assert len(sizes) == 1 and None not in sizes  # plane 0 predicted again at the settled scale
    assert preds[1].scale is not None and preds[0].scale is None and preds[2].scale is None


def test_a_stack_whose_scale_is_never_measured_still_runs_one_model(tissue, monkeypatch):
    """The choice measured on plane 1 only, the scale on none: plane 0 (which ran the default)
    runs again with the chosen model, at the model's scale."""
    from napari_cellseg import pipeline
    from napari_cellseg.pipeline import iter_predict_planes

    calls = []

    def first_unmeasured(image, zoom=1.0, device="auto", tophat_px=None, memo=None):
        calls.append(zoom)
        if len(calls) == 1:
            return ModelChoice(DEFAULT_MODEL, {DEFAULT_MODEL: 0.0, NUCLEAR_MODEL: 0.0}, zoom)
        return ModelChoice(NUCLEAR_MODEL, {DEFAULT_MODEL: 0.7, NUCLEAR_MODEL: 0.75}, zoom)

    monkeypatch.setattr(choose, "choose_model", first_unmeasured)
    monkeypatch.setattr(pipeline, "_estimate", lambda *a, **k: (None, None))  # nothing to measure
    preds = drain(iter_predict_planes(np.stack([tissue, tissue[::-1]]), "auto", None, "cpu"))
    assert [p.model_name for p in preds] == [NUCLEAR_MODEL] * 2 and len(calls) == 2
    assert [p.pixel_size for p in preds] == [None, None]
    assert all(p.model_choice.name == NUCLEAR_MODEL for p in preds)


def test_a_named_model_keeps_its_name_on_every_plane(tissue):
    from napari_cellseg.pipeline import iter_predict_planes

    preds = drain(iter_predict_planes(np.stack([tissue, tissue]), 0.5, NUCLEAR_MODEL, "cpu"))
    assert [p.model_name for p in preds] == [NUCLEAR_MODEL] * 2 and preds[0].model_choice is None


def test_auto_is_refused_where_one_model_must_be_named(tmp_path):
    from napari_cellseg.model.registry import user_model_path
    from napari_cellseg.workflows.large import segment_large

    with pytest.raises(ValueError, match="'auto' chooses a model per image"):
        resolve_model("auto")
    with pytest.raises(ValueError, match="automatic choice"):
        user_model_path("Auto", tmp_path)
    with pytest.raises(ValueError, match="'auto' chooses a model per image"):
        segment_large(np.zeros((64, 64), np.float32), tmp_path / "slide.zarr", model="auto")


def test_a_batch_records_each_images_chosen_model_and_resumes(tissue, tmp_path, monkeypatch):
    from napari_cellseg.batch import iter_segment_files

    def segment_files(paths, out, **kwargs):
        return drain(iter_segment_files(paths, out, "unet", device="cpu", **kwargs))

    tifffile.imwrite(tmp_path / "a.tif", tissue)
    out = tmp_path / "out"
    calls = []
    monkeypatch.setattr(choose, "choose_model", _always_nuclear(calls))
    first = segment_files([tmp_path / "a.tif"], out, pixel_size=0.5)
    record = json.loads((out / "a_params.json").read_text())
    assert record["model"]["name"] == NUCLEAR_MODEL and record["model"]["sha256"]
    assert record["model_choice"]["chosen"] == NUCLEAR_MODEL
    asked = record["request"]["model"]
    assert asked["name"] == "auto" and [c["name"] for c in asked["candidates"]] == [DEFAULT_MODEL, NUCLEAR_MODEL]
    # The same request resumes (nothing redone); the model named is another request.
    assert segment_files([tmp_path / "a.tif"], out, pixel_size=0.5, resume=True) == first
    assert len(calls) == 1
    with pytest.raises(FileExistsError):
        segment_files([tmp_path / "a.tif"], out, pixel_size=0.5, model=DEFAULT_MODEL, resume=True)


def test_the_dense_frames_keep_the_default_model(dense_dir):
    """The real dense look must not switch: its CV figure is the default's only if none does."""
    from napari_cellseg.io import load_pairs

    for name, image, _ in load_pairs(dense_dir, dense_dir):
        choice = choose.choose_model(image, 1.0, "cpu")
        assert choice.name == DEFAULT_MODEL and choice.measured, (name, choice.scores)


def test_the_cli_says_which_model_each_image_got(tissue, tmp_path, monkeypatch, capsys):
    from napari_cellseg import cli

    tifffile.imwrite(tmp_path / "a.tif", tissue)
    monkeypatch.setattr(choose, "choose_model", _always_nuclear([]))
    assert cli.main(["segment", str(tmp_path / "a.tif"), "--out", str(tmp_path / "out"),
                     "--pixel-size", "0.5", "--device", "cpu"]) == 0
    assert f"cells (model {NUCLEAR_MODEL}) ->" in capsys.readouterr().out
    # A model named is used as it is, and the line does not repeat it.
    assert cli.main(["segment", str(tmp_path / "a.tif"), "--out", str(tmp_path / "out2"),
                     "--pixel-size", "0.5", "--device", "cpu", "--model", DEFAULT_MODEL]) == 0
    text = capsys.readouterr().out
    assert "(model" not in text
    assert json.loads((tmp_path / "out2" / "a_params.json").read_text())["model"]["name"] == DEFAULT_MODEL
    # "auto" by name is the choice too, and says so.
    assert cli.main(["segment", str(tmp_path / "a.tif"), "--out", str(tmp_path / "out3"),
                     "--pixel-size", "0.5", "--device", "cpu", "--model", "auto"]) == 0
    assert f"cells (model {NUCLEAR_MODEL}) ->" in capsys.readouterr().out


def test_the_choice_sees_the_crops_as_the_network_will(tissue, monkeypatch):
    """With a top-hat background removal asked for, the choice's crops are filtered too,
    with the radius on the model's grid; a zoom beyond the pipeline's bounds is refused
    before any crop runs through either network."""
    from napari_cellseg.core import preprocess

    radii = []
    real = preprocess.tophat
    monkeypatch.setattr(preprocess, "tophat",
                        lambda image, radius: radii.append((image.shape, radius)) or real(image, radius))
    ncs.predict(tissue, 0.5, None, "cpu", tophat_um=5.0)
    # The 3 crops of 128 px at zoom 1, each with 5 µm / 0.5 µm per px (the whole grid's own
    # filter goes through pipeline's name for it, patched or not by import order).
    assert [r for r in radii if r[0] == (128, 128)] == [((128, 128), 10.0)] * 3
    monkeypatch.setattr(choose, "choose_model", lambda *a, **k: pytest.fail("the choice ran"))
    with pytest.raises(ValueError, match=r"outside \[1/8, 8\]"):
        ncs.predict(tissue, 1000.0, None, "cpu")


def test_a_user_model_saved_as_auto_is_not_listed(tmp_path, monkeypatch):
    from napari_cellseg.model.registry import available_models, builtin_models

    monkeypatch.setenv("NAPARI_CELLSEG_MODELS", str(tmp_path))
    (tmp_path / "auto.safetensors").write_bytes(builtin_models()[DEFAULT_MODEL].read_bytes())
    (tmp_path / "mine.safetensors").write_bytes(builtin_models()[DEFAULT_MODEL].read_bytes())
    names = list(available_models())
    assert "mine" in names and "auto" not in names


def test_a_plane_that_ran_with_the_settled_values_does_not_run_again(tissue, monkeypatch):
    """Plane 0 measured nothing but ran the default model at the given pixel size; plane 1
    settles on the default: plane 0 is not predicted a second time."""
    from napari_cellseg import pipeline
    from napari_cellseg.pipeline import iter_predict_planes

    calls, ran = [], []

    def first_unmeasured(image, zoom=1.0, device="auto", tophat_px=None, memo=None):
        calls.append(zoom)
        scores = {DEFAULT_MODEL: 0.0, NUCLEAR_MODEL: 0.0} if len(calls) == 1 else {DEFAULT_MODEL: 0.8, NUCLEAR_MODEL: 0.7}
        return ModelChoice(DEFAULT_MODEL, scores, zoom)

    real = pipeline.iter_predict

    def counted(image, *args, **kwargs):
        ran.append(float(image.sum()))
        return real(image, *args, **kwargs)

    monkeypatch.setattr(choose, "choose_model", first_unmeasured)
    monkeypatch.setattr(pipeline, "iter_predict", counted)
    stack = np.stack([tissue, tissue[::-1] * 2])
    preds = drain(iter_predict_planes(stack, 0.5, None, "cpu"))
    assert len(ran) == 2 and len(calls) == 2
    assert [p.model_name for p in preds] == [DEFAULT_MODEL] * 2
    assert all(p.model_choice is preds[1].model_choice for p in preds)


def test_a_failed_estimate_by_the_chosen_model_keeps_the_defaults(tissue, monkeypatch):
    from napari_cellseg import pipeline

    monkeypatch.setattr(choose, "choose_model", _always_nuclear([]))
    real_estimate = pipeline._estimate
    nuclear_net = resolve_model(NUCLEAR_MODEL)[0]
    monkeypatch.setattr(pipeline, "_estimate", lambda image, net, info, device, zooms=None, memo=None, instead=None, warned=None: (
        (None, None) if net is nuclear_net else real_estimate(image, net, info, device)))
    default_reading = real_estimate(tissue, *resolve_model(DEFAULT_MODEL), "cpu")
    pred = ncs.predict(tissue, "auto", None, "cpu")
    assert pred.model_name == NUCLEAR_MODEL and pred.pixel_size == default_reading[0]
    assert pred.scale is not None


def test_the_warnings_say_what_happened_when_two_models_estimate(tissue, monkeypatch):
    """The nuclear model, chosen, estimates again: its failure is only logged (the default's
    reading stands, or the default's own failure was said), and its success replaces the
    default's failure, which no longer holds."""
    from napari_cellseg import pipeline

    monkeypatch.setattr(choose, "choose_model", _always_nuclear([]))
    # Noise: both fail; one warning of it, not two.
    noise = np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
    warned = ncs.predict(noise, "auto", None, "cpu").warnings
    assert sum("looks like noise" in w for w in warned) == 1
    assert not any("the default model's reading is kept" in w for w in warned)
    # The default fails, the nuclear model measures: its scale, and no warning of a failure.
    nuclear_net = resolve_model(NUCLEAR_MODEL)[0]
    sentinel = object()

    def estimate(image, net, info, device, zooms=None, memo=None, instead=None, warned=None):
        if net is nuclear_net:
            return 0.37, sentinel
        warned.append("automatic scale: the default saw nothing")
        return None, None

    monkeypatch.setattr(pipeline, "_estimate", estimate)
    pred = ncs.predict(tissue, "auto", None, "cpu")
    assert pred.pixel_size == 0.37 and pred.scale is sentinel
    assert not any("the default saw nothing" in w for w in pred.warnings)


def test_a_plane_run_again_at_the_model_scale_keeps_why_it_was_not_estimated(monkeypatch):
    """No plane measures a scale; the noise plane settles the model, and the blank plane,
    run first with the default, runs again with it, at the model's scale: its warning of why
    holds still (it was lost with the first run's Prediction)."""
    from napari_cellseg.pipeline import iter_predict_planes
    from napari_cellseg.progress import drain

    monkeypatch.setattr(choose, "choose_model", _always_nuclear([]))
    noise = np.random.default_rng(0).normal(size=(96, 96)).astype(np.float32)
    preds = drain(iter_predict_planes(np.stack([np.zeros_like(noise), noise]), "auto", None, "cpu"))
    assert [p.model_name for p in preds] == [NUCLEAR_MODEL] * 2 and preds[0].pixel_size is None
    assert any(w.startswith("automatic scale: cannot estimate the scale") for w in preds[0].warnings)
    assert any("looks like noise" in w for w in preds[1].warnings)


def test_the_chosen_model_never_re_estimates_on_a_rung_passed_over_as_noise(monkeypatch):
    """Tiny nuclei are likeliest at rung 4; were it noise (scale.reads_noise), the default
    takes rung 2, and the nuclear model, chosen, must estimate there, not on rung 4."""
    from test_scale import _tiny_nuclei

    from napari_cellseg import pipeline, scale

    monkeypatch.setattr(choose, "choose_model", _always_nuclear([]))
    monkeypatch.setattr(scale, "reads_noise", lambda image, zoom, *a, **k: True)
    real_estimate, asked = pipeline._estimate, []

    def estimate(image, net, info, device, zooms=None, memo=None, instead=None, warned=None):
        asked.append(zooms)
        return real_estimate(image, net, info, device, zooms=zooms, memo=memo, instead=instead)

    monkeypatch.setattr(pipeline, "_estimate", estimate)
    pred = ncs.predict(_tiny_nuclei(), "auto", None, "cpu")
    assert pred.model_name == NUCLEAR_MODEL
    assert asked == [None, (2.0,)]
    assert pred.scale.noise_zooms == () and pred.scale.zoom < 2 * np.sqrt(2) + 1e-9
