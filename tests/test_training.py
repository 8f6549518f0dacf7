"""The training workflow: progress per step, cancel, units recorded in the saved model,
the fused inference copy's cache, and resolving a model argument."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cellseg.core import synthetic as syn  # noqa: E402
from napari_cellseg.model import inference  # noqa: E402
from napari_cellseg.model.data import make_example, median_cell_diameter  # noqa: E402
from napari_cellseg.model.store import ModelInfo, load_model, resolve_model, save_model  # noqa: E402
from napari_cellseg.model.train import TrainConfig, train  # noqa: E402
from napari_cellseg.model.unet import UNet, UNetConfig  # noqa: E402
from napari_cellseg.progress import drain  # noqa: E402
from napari_cellseg.workflows.training import iter_train, model_paths  # noqa: E402

TINY = (4, 8, 16)


def _tiny_config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "steps_per_epoch": 3, "batch": 2, "patch": 48, "margin": 4,
                          "lr": 1e-2, "device": "cpu", "precision": "fp32", **kw})


def _pairs(n=2, shape=(96, 96), radius=7.0):
    out = []
    for i in range(n):
        s = syn.make_whole_cell_image(seed=i, shape=shape, cell_radius=radius, stain="membrane")
        out.append((f"img{i}", s.image, s.labels))
    return out


def test_median_cell_diameter_leaves_out_cells_cut_by_the_edge():
    labels = np.zeros((20, 30), np.int32)
    labels[2:4, 2:4] = 1  # area 4
    labels[2:8, 10:16] = 2  # area 36
    labels[10:18, 2:10] = 3  # area 64
    labels[0:10, 25:30] = 4  # area 50, cut by two edges: left out
    assert median_cell_diameter([labels]) == pytest.approx(np.sqrt(4 * 36 / np.pi))
    # Over several images the cells are pooled; with only edge cells, they count.
    edge_only = np.zeros((5, 5), np.int32)
    edge_only[:, :2] = 1  # area 10
    assert median_cell_diameter([edge_only]) == pytest.approx(np.sqrt(40 / np.pi))
    # labels[:, :9] keeps cell 1 whole and cuts cell 3: pooled areas 4, 36, 64 and 4.
    pooled = np.median(np.sqrt(4 * np.array([4, 36, 64, 4]) / np.pi))
    assert median_cell_diameter([labels, labels[:, :9]]) == pytest.approx(pooled)
    with pytest.raises(ValueError, match="no labelled cell"):
        median_cell_diameter([np.zeros((4, 4), np.int32)])


def test_train_yields_every_step_then_the_epoch():
    scene = syn.make_whole_cell_image(seed=5, shape=(96, 96), cell_radius=8)
    ex = make_example(scene.image, scene.labels, scene.nucleus_labels)
    torch.manual_seed(0)
    model = UNet(UNetConfig(channels=TINY, dropout=0.0))
    steps = list(train(model, [ex], [], _tiny_config()))
    assert [(p.done, p.total, p.unit) for p in steps] == [
        (1, 3, "steps"), (2, 3, "steps"), (3, 3, "steps"), (1, 2, "epochs"),
        (1, 3, "steps"), (2, 3, "steps"), (3, 3, "steps"), (2, 2, "epochs")]
    assert steps[1].message == "epoch 1/2, step 2/3" and steps[1].info is None
    assert steps[3].info["epoch"] == 1 and steps[3].message.startswith("epoch   1/2  loss ")
    assert not model.training


def test_closing_training_cancels_within_an_epoch(tmp_path):
    out = tmp_path / "cancelled.safetensors"
    gen = iter_train(_pairs(), out, config=_tiny_config(epochs=5, steps_per_epoch=10), channels=TINY)
    seen = []
    for p in gen:
        seen.append(p)
        if p.unit == "steps" and p.done == 3:
            break
    gen.close()
    assert [p.unit for p in seen] == ["epochs", "steps", "steps", "steps"]  # the plan, then 3 steps
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    _, best, ckpt = model_paths(out)
    assert not out.exists() and not best.exists() and not ckpt.exists()  # no epoch ended: nothing written


def test_closing_the_loop_leaves_the_model_for_inference():
    scene = syn.make_whole_cell_image(seed=5, shape=(96, 96), cell_radius=8)
    model = UNet(UNetConfig(channels=TINY, dropout=0.0))
    gen = train(model, [make_example(scene.image, scene.labels)], [], _tiny_config())
    next(gen)
    assert model.training
    gen.close()
    assert not model.training and torch.is_grad_enabled()


def test_workflow_small_images_patch_and_units(tmp_path):
    """Images under 64 px give no validation strip, the patch shrinks to them, and the
    saved model records the pixel size and the labels' median diameter in µm."""
    pairs = _pairs(2, shape=(48, 56))
    result = drain(iter_train(pairs, tmp_path / "small", config=_tiny_config(patch=176, margin=8),
                              channels=TINY, pixel_size=0.25))
    assert result.path == tmp_path / "small.safetensors" and result.best is None
    info = load_model(result.path)[1]
    assert info.extra["train_config"]["patch"] == 48 and info.extra["train_config"]["margin"] == 6
    assert info.extra["epochs_run"] == 2 and "val_mAP" not in info.extra["history_tail"][-1]
    d_px = median_cell_diameter([lab for _, _, lab in pairs])
    assert info.pixel_size == 0.25
    assert info.cell_diameter_um == pytest.approx(d_px * 0.25)
    assert info.extra["val_fraction"] == 0.0  # asked for 0.2, but nothing was held out
    # From scratch without a pixel size: 0.5 µm.
    scratch = drain(iter_train(pairs, tmp_path / "scratch", config=_tiny_config(epochs=1), channels=TINY))
    assert scratch.info.pixel_size == 0.5 and scratch.info.cell_diameter_um == pytest.approx(d_px * 0.5)
    with pytest.raises(FileExistsError, match="exists"):
        next(iter_train(pairs, tmp_path / "small", config=_tiny_config()))
    with pytest.raises(ValueError, match="no labelled cell"):
        next(iter_train([("empty", pairs[0][1], np.zeros_like(pairs[0][2]))], tmp_path / "e"))


def test_fine_tuning_keeps_the_initial_pixel_size_and_drops_its_size_defaults(tmp_path, tiny_model):
    net, info = tiny_model
    info.pixel_size = 0.3
    info.extra["segment_defaults"] = {"min_intensity": 0.1, "cell_diameter": 6.0, "min_cell_area": 5.0}
    init = save_model(tmp_path / "init", net, info)
    pairs = _pairs(1)
    result = drain(iter_train(pairs, tmp_path / "tuned", init=init, config=_tiny_config(epochs=1)))
    assert result.info.pixel_size == 0.3
    assert result.info.cell_diameter_um == pytest.approx(median_cell_diameter([pairs[0][2]]) * 0.3)
    assert result.info.extra["segment_defaults"] == {"min_intensity": 0.1}


def test_a_fine_tune_records_its_own_run_not_its_start_models(tmp_path, tiny_model):
    """The start model's held-out band, starting score and kept epoch described another run:
    a fine-tune on a 48 px image (no validation) had recorded val_band [4, 5] and a start
    val AP it never measured."""
    net, info = tiny_model
    info.extra.update({"val_band": [4, 5], "start_val_mAP": 0.62, "kept_epoch": 17, "source_file": "x",
                       "segment_defaults": {"min_intensity": 0.1}, "val_fraction": 0.2})
    init = save_model(tmp_path / "init", net, info)
    pairs = _pairs(1, shape=(48, 48))
    extra = drain(iter_train(pairs, tmp_path / "tuned", init=init, config=_tiny_config(epochs=1, patch=48))).info.extra
    for key in ("val_band", "start_val_mAP", "kept_epoch", "source_file"):
        assert key not in extra, key
    assert extra["segment_defaults"] == {"min_intensity": 0.1} and extra["val_fraction"] == 0.0
    assert extra["fine_tuned_from"]["name"] == "init"


def test_training_labels_with_huge_or_float_ids_are_renumbered(tmp_path):
    """An id of 2**32 + 7 would wrap onto cell 7 in int32; float ids that are whole are ids."""
    name, image, labels = _pairs(1)[0]
    big = np.where(labels == 1, 2**32 + 7, labels.astype(np.int64))
    result = drain(iter_train([(name, image, big.astype(np.float64))], tmp_path / "m",
                              config=_tiny_config(epochs=1), channels=TINY))
    assert result.info.extra["trained_on"][0]["cells"] == len(np.unique(labels)) - 1
    with pytest.raises(ValueError, match=">= 0"):
        next(iter_train([(name, image, -labels)], tmp_path / "neg", config=_tiny_config(), channels=TINY))


def test_a_user_model_cannot_take_a_built_in_name(tmp_path):
    from napari_cellseg.model.registry import DEFAULT_MODEL, user_model_path

    with pytest.raises(ValueError, match="built-in model's name"):
        user_model_path(DEFAULT_MODEL, tmp_path)
    assert user_model_path("my_cells", tmp_path) == tmp_path / "my_cells.safetensors"


def test_fine_tuning_a_2x_model_trains_on_its_grid(tmp_path, tiny_model):
    """A 2x model (network at 0.25 µm/px for 0.5 µm/px images) is fine-tuned on the user's
    images brought onto its grid, as its recipe trained it; it records the images' pixel
    size and the zoom, and then segments images of that size with none given."""
    import napari_cellseg as ncs
    from napari_cellseg.core.preprocess import rescale

    net, info = tiny_model
    info.pixel_size = 0.25
    info.extra["image_pixel_size"] = 0.5
    init = save_model(tmp_path / "x2init", net, info)
    pairs = _pairs(1, shape=(48, 56))
    # No pixel size given: the images are the model's image pixel size (0.5), zoomed 2x.
    plain_run = drain(iter_train(pairs, tmp_path / "plain", init=init,
                                 config=_tiny_config(epochs=1, patch=176, margin=8)))
    plain = plain_run.info
    assert plain.pixel_size == 0.25 and plain.extra["image_pixel_size"] == 0.5
    assert plain.extra["trained_at_zoom"] == 2.0 and plain.extra["trained_on"][0]["shape"] == [48, 56]
    # The 48 px image is too small to give up a validation strip, on the user's grid (its
    # 96 px upsampled copy would have given one of 10 px of real data): it trains whole,
    # and the patch fits the upsampled image (96 x 112), not the 48 x 56 original.
    assert plain.extra["train_config"]["patch"] == 96
    assert plain_run.history and not any("val_mAP" in r for r in plain_run.history)
    # Images at 0.4 µm/px: zoomed 1.6x onto the 0.25 µm grid; the diameter is measured there.
    result = drain(iter_train(pairs, tmp_path / "own", init=init, config=_tiny_config(epochs=1), pixel_size=0.4))
    tuned = load_model(result.path)[1]
    assert tuned.pixel_size == 0.25 and tuned.extra["image_pixel_size"] == 0.4
    assert tuned.extra["trained_at_zoom"] == pytest.approx(1.6)
    grid_labels = rescale(pairs[0][2], 1.6, order=0)
    assert grid_labels.shape == (77, 90)
    assert tuned.cell_diameter_um == pytest.approx(median_cell_diameter([grid_labels]) * 0.25)
    assert tuned.cell_diameter_um == pytest.approx(median_cell_diameter([pairs[0][2]]) * 0.4, rel=0.05)
    # An image with no pixel size is taken at 0.4 µm/px: labels on the image's own grid.
    pred = ncs.predict(pairs[0][1], None, model=result.path, device="cpu")
    assert pred.segment().shape == (48, 56) and pred.pixel_size is None
    # A pixel size in nm by mistake (65 for 0.065 µm) asks for a 260x zoom: refused in
    # words before any resampling, not a MemoryError or a machine swapping.
    with pytest.raises(ValueError, match="outside"):
        drain(iter_train(pairs, tmp_path / "nm", init=init, config=_tiny_config(epochs=1), pixel_size=65))
    assert not (tmp_path / "nm.safetensors").exists()


def test_validation_fuses_the_network_once_per_epoch(tmp_path, monkeypatch):
    fused = []
    real = inference._fuse
    monkeypatch.setattr(inference, "_fuse", lambda m, d: fused.append(m) or real(m, d))
    result = drain(iter_train(_pairs(3), tmp_path / "m", config=_tiny_config(), channels=TINY))
    assert result.best == tmp_path / "m.best.safetensors" and result.best.exists()
    assert "val_mAP" in result.history[-1]
    assert len(fused) == 2  # 2 epochs x 3 validation strips: one fused copy per epoch


def test_a_held_out_strip_without_cells_is_not_scored(tmp_path):
    """An image whose right-hand strip has no labelled cell (a blank margin, as the dense
    frames have) would score AP 0 at every epoch and pick the best epoch blindly: it
    trains whole, and the run says so."""
    (name, image, labels), other = _pairs(2)
    labels = labels.copy()
    labels[:, round(labels.shape[1] * 0.8) - 12:] = 0  # no cell reaches the held-out strip
    gen = iter_train([(name, image, labels), other], tmp_path / "m", config=_tiny_config(epochs=1), channels=TINY)
    first = next(gen)
    assert "validating on the held-out part in 1 of 2 images" in first.message
    assert "no labelled cell in the held-out part of img0" in first.message
    result = drain(gen)
    assert result.info.extra["no_validation_cells"] == ["img0"]
    assert result.best is not None  # img1's strip still validates
    stale = tmp_path / "alone.best.safetensors"
    stale.write_bytes(b"an earlier run's best epoch")
    alone = drain(iter_train([(name, image, labels)], tmp_path / "alone", config=_tiny_config(epochs=1),
                             channels=TINY))
    assert alone.best is None and "val_mAP" not in alone.history[-1]
    assert not stale.exists()  # it would pass for this run's best epoch
    # Cross-validation bands: a band without cells is named as such.
    banded = labels.copy()
    banded[:, 60:] = 0  # band 5 of 5 (columns 77-95) holds no cell
    gen = iter_train([(name, image, banded), other], tmp_path / "cv", config=_tiny_config(epochs=1),
                     channels=TINY, val_band=(4, 5))
    first = next(gen)
    gen.close()
    assert "validating on band 5 of 5 in 1 of 2 images" in first.message
    assert "no labelled cell in band 5 of 5 of img0" in first.message


def test_a_resumed_fine_tune_keeps_its_start_score(tmp_path, tiny_model):
    net, info = tiny_model
    init = save_model(tmp_path / "init", net, info)
    first = drain(iter_train(_pairs(1), tmp_path / "tuned", init=init, config=_tiny_config(epochs=1)))
    start = first.info.extra["start_val_mAP"]
    resumed = drain(iter_train(_pairs(1), tmp_path / "tuned", init=init, config=_tiny_config(epochs=2),
                               resume=True, overwrite=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2]  # continued, not restarted
    assert resumed.info.extra["start_val_mAP"] == start
    assert load_model(resumed.path)[1].extra["start_val_mAP"] == start


@pytest.mark.parametrize(("start", "scores", "kept"), [
    (0.5, [0.4, 0.6, 0.55], 2),  # epoch 2 beats the starting model and epoch 3
    (0.9, [0.4, 0.6, 0.55], None),  # nothing beats it: the last epoch is saved, and it says so
])
def test_a_fine_tune_keeps_the_best_epoch_only_if_it_beats_the_start(tmp_path, tiny_model, monkeypatch,
                                                                     start, scores, kept):
    from napari_cellseg.workflows import training

    net, info = tiny_model
    init = save_model(tmp_path / "init", net, info)
    given = iter([start, *scores])
    monkeypatch.setattr(training, "validation_scores", lambda *a, **k: dict.fromkeys(("val_mAP", "score"), next(given)))
    weights = {}  # the weights after each epoch
    gen = iter_train(_pairs(1), tmp_path / "tuned", init=init, config=_tiny_config(epochs=3), keep_best=True)
    messages = []
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        messages.append(p.message or "")
        if p.info is not None:
            weights[p.info["epoch"]] = {k: v.clone() for k, v in gen.gi_frame.f_locals["model"].state_dict().items()}
    assert any(f"starting model scores val AP {start:.3f}" in m for m in messages)
    assert result.info.extra["start_val_mAP"] == start and result.info.extra["kept_epoch"] == kept
    assert [r["best"] for r in result.history] == [s > start and s == max(scores[: i + 1]) for i, s in enumerate(scores)]
    saved, saved_info = load_model(result.path)
    expected = weights[kept if kept is not None else 3]
    for k, v in saved.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    assert saved_info.extra["kept_epoch"] == kept and len(saved_info.extra["history_tail"]) >= 1
    assert (result.best is None) == (kept is None)


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_norm_keeps_the_batch_norm_statistics(freeze):
    model = UNet(UNetConfig(channels=TINY))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".weight")}
    examples = [make_example(img, lab, name=n) for n, img, lab in _pairs(1)]
    drain(train(model, examples, config=_tiny_config(epochs=1, freeze_norm=freeze)))
    after = model.state_dict()
    same = [torch.equal(before[k], after[k]) for k in before]
    assert all(same) if freeze else not any(same)
    assert not all(torch.equal(weights[k], after[k]) for k in weights)  # the weights trained either way


def test_fused_copy_is_cached_and_rebuilt_when_the_weights_change(tiny_model):
    model, _ = tiny_model
    x = torch.rand(1, 1, 32, 32)
    first = inference.inference_copy(model, "cpu")
    assert inference.inference_copy(model, torch.device("cpu")) is first
    with torch.inference_mode():
        torch.testing.assert_close(first(x), model(x), atol=1e-5, rtol=1e-4)
    # An optimiser step changes the weights in place: a new copy, with the new weights.
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).sum().backward()
    opt.step()
    model.eval()
    second = inference.inference_copy(model, "cpu")
    assert second is not first
    with torch.inference_mode():
        torch.testing.assert_close(second(x), model(x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(first(x), model(x), atol=1e-3)
    # A state loaded in place is a change too; another model has its own copy.
    other = UNet(model.config).eval()
    assert inference.inference_copy(other, "cpu") is not second
    model.load_state_dict(other.state_dict())
    assert inference.inference_copy(model, "cpu") is not second
    assert inference.inference_copy(model, "cpu") is inference.inference_copy(model, "cpu")


def test_resolve_model(tmp_path, tiny_model):
    pair = tiny_model
    assert resolve_model(pair) is pair
    with pytest.raises(TypeError, match="ModelInfo"):
        resolve_model(pair[0])
    with pytest.raises(TypeError, match="pair"):
        resolve_model((pair[0], {}))
    with pytest.raises(TypeError, match="int"):
        resolve_model(3)
    with pytest.raises(FileNotFoundError, match="no model"):
        resolve_model("no-such-model")
    path = save_model(tmp_path / "m", *pair)
    net, info = resolve_model(path)
    again, info2 = resolve_model(str(path))
    assert again is net and info2 is not info  # loaded once; each caller its own info
    assert isinstance(info, ModelInfo) and not net.training
    save_model(path, UNet(pair[0].config), ModelInfo(config=pair[0].config), overwrite=True)
    assert resolve_model(path)[0] is not net  # the file changed: loaded again
    assert resolve_model(None)[1].pixel_size == 0.5  # the shipped model


@pytest.mark.slow
def test_a_model_fine_tuned_on_larger_cells_records_their_size_and_segments_them(tmp_path):
    """The units bug: fine-tuned on cells twice the synthetic default (radius 18 px, about
    17 µm at the shipped model's 0.5 µm/px), a model must record their diameter, not keep
    the shipped 7.5 µm, from which the minimum cell area and the LoG scales derive.

    Measured (4 held-out images, 24 float32 steps from the shipped model): mean AP 0.928
    with the default seeds and 0.931 with the shape split at the recorded diameter; with
    the old 7.5 µm, 0.916 and 0.790 (its LoG scales cut large cells in pieces; in a
    bfloat16 run, 73 cells for 59). The default seeds barely depend on the diameter, so
    the bound that tells the two apart is the shape split's.
    """
    import napari_cellseg
    from napari_cellseg.core.metrics import evaluate
    from napari_cellseg.core.params import Grid, SegmentParams

    radius = 18.0
    pairs = []
    for i in range(2):
        s = syn.make_whole_cell_image(seed=i, shape=(192, 192), cell_radius=radius,
                                      stain="membrane" if i % 2 == 0 else "cytoplasm")
        pairs.append((f"big{i}", s.image, s.labels))
    cfg = TrainConfig(epochs=3, steps_per_epoch=8, batch=4, patch=128, lr=1e-3, device="cpu",
                      precision="fp32")
    result = drain(iter_train(pairs, tmp_path / "big", init="dense_tcells", config=cfg, val_fraction=0))
    info = load_model(result.path)[1]
    d_um = median_cell_diameter([lab for _, _, lab in pairs]) * 0.5
    assert info.pixel_size == 0.5  # the shipped model's: the images were used at their scale
    assert info.cell_diameter_um == pytest.approx(d_um, rel=0.01)
    assert info.cell_diameter_um == pytest.approx(2 * radius * 0.5, rel=0.05)
    grid = Grid(info.pixel_size, info.cell_diameter_um)
    assert grid.min_area_px(SegmentParams()) == round(0.2 * np.pi * (d_um / 0.5 / 2) ** 2)

    held = [syn.make_whole_cell_image(seed=10 + i, shape=(256, 256), cell_radius=radius,
                                      stain="membrane" if i % 2 == 0 else "cytoplasm") for i in range(4)]
    preds = [napari_cellseg.predict(h.image, model=result.path) for h in held]

    def mean_ap(**params):
        return np.mean([evaluate(h.labels, p.segment(**params)).ap for h, p in zip(held, preds, strict=True)])

    assert mean_ap() > 0.85
    assert mean_ap(seed_split="shape") > 0.88
    assert mean_ap(seed_split="shape", cell_diameter=7.5) < 0.88  # the old record fails the bound


def test_annotated_region_is_the_labelled_box_grown_by_the_margin():
    from napari_cellseg.workflows.training import annotated_region

    labels = np.zeros((200, 300), np.int32)
    labels[50:60, 100:180] = 1
    labels[90:95, 120:125] = 2
    assert annotated_region(labels, margin=16) == (slice(34, 111), slice(84, 196))
    # grown to 64 px where the box is smaller, centred, inside the image
    small = np.zeros((100, 100), np.int32)
    small[2:6, 90:95] = 3
    assert annotated_region(small, margin=2, min_side=64) == (slice(0, 64), slice(36, 100))
    with pytest.raises(ValueError, match="no labelled cell"):
        annotated_region(np.zeros((10, 10), np.int32))


def test_time_budget_stops_training_and_says_so():
    from napari_cellseg.model.train import TrainConfig, new_model, train

    pairs = _pairs(2)
    from napari_cellseg.model.data import split_pair

    examples = [split_pair(image, labels, 0, name=name)[0] for name, image, labels in pairs]
    model, _ = new_model((4, 8))
    cfg = TrainConfig(epochs=50, steps_per_epoch=3, batch=2, patch=48, margin=4, device="cpu",
                      precision="fp32", time_budget_s=1e-6)
    gen = train(model, examples, [], cfg)
    records = []
    try:
        while True:
            p = next(gen)
            if p.info is not None:
                records.append(p.info)
    except StopIteration as stop:
        state = stop.value
    # past the budget after the first step: epoch 1 ends there, and training stops
    assert len(records) == 1 and state.epoch == 1
    assert records[0]["steps"] == 1 and records[0]["stopped"] == "time budget of 0 s"
    with pytest.raises(ValueError, match="time budget"):
        next(train(model, examples, [], TrainConfig(**{**cfg.to_dict(), "time_budget_s": -1.0})))


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    """Resuming onto a checkpoint left by another run (other images) returned that run's
    weights as a model trained on the new images: refused now; the same run resumes."""
    pairs = _pairs(2)
    first = drain(iter_train(pairs[:1], tmp_path / "m", config=_tiny_config(epochs=1), channels=TINY))
    assert (tmp_path / "m.ckpt").exists() and (tmp_path / "m.ckpt.json").exists()
    with pytest.raises(ValueError, match="checkpoint of another run"):
        drain(iter_train(pairs[1:], tmp_path / "m", config=_tiny_config(epochs=1), channels=TINY,
                         overwrite=True, resume=True))
    again = drain(iter_train(pairs[:1], tmp_path / "m", config=_tiny_config(epochs=2), channels=TINY,
                             overwrite=True, resume=True))  # the same run, trained one epoch longer
    assert [r["epoch"] for r in again.history] == [1, 2] and first.history[0]["epoch"] == 1
