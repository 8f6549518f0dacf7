"""The touch class (a 4-class model: seed, cytoplasm, background, touch): its targets and
loss worked out by hand, 3-class training left exactly as it was, touching cells that
share their border at inference, and a 4-class model trained, saved and used end to end."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cellseg.core.params import Grid  # noqa: E402
from napari_cellseg.model import targets  # noqa: E402
from napari_cellseg.model.data import make_example  # noqa: E402
from napari_cellseg.model.train import TrainConfig, class_weights, loss_fn, new_model  # noqa: E402
from napari_cellseg.pipeline import Prediction  # noqa: E402


def two_touching_cells() -> np.ndarray:
    labels = np.zeros((9, 16), np.int32)
    labels[1:8, 1:7] = 1
    labels[1:8, 7:13] = 2  # touches cell 1 along columns 6 | 7
    return labels


def test_the_touching_line_is_coded_touch_and_is_background_for_three_classes():
    labels = two_touching_cells()
    labels[1:8, 15] = 3  # two background columns (13, 14) from cell 2: CONTACT, not TOUCH
    ex = make_example(np.ones(labels.shape, np.float32), labels)
    line = targets.touching_border(labels)
    assert line[4, 6] and line[4, 7] and not line[4, 5] and line.sum() == 2 * 7
    assert np.all(ex.target[line] == targets.TOUCH)
    assert np.all(ex.target[~line] != targets.TOUCH)
    assert ex.target[4, 13] == ex.target[4, 14] == targets.CONTACT
    t = torch.from_numpy(ex.target[None].astype(np.int64))
    three = targets.target_probabilities(t, 3)[0]
    four = targets.target_probabilities(t, 4)[0]
    assert three.shape == (3, 9, 16) and four.shape == (4, 9, 16)
    assert three[targets.BACKGROUND, 4, 6] == 1 and three[targets.BACKGROUND, 4, 13] == 1
    assert four[targets.TOUCH_CLASS, 4, 6] == 1 and four[:, 4, 6].sum() == 1
    assert four[targets.BACKGROUND, 4, 13] == 1  # CONTACT is background either way
    # Every pixel but the touching line has the same target with 3 or 4 classes.
    np.testing.assert_array_equal(four[:3, ~line].numpy(), three[:, ~line].numpy())
    with pytest.raises(ValueError, match="3 classes"):
        targets.target_probabilities(t, 5)


def test_soft_seed_codes_stay_below_touch():
    labels = two_touching_cells()
    soft = make_example(np.ones(labels.shape, np.float32), labels, seed_target="soft").target
    cell_codes = soft[(labels > 0) & ~targets.touching_border(labels)]
    assert cell_codes.min() >= targets.SOFT and cell_codes.max() <= targets.SOFT + targets.SOFT_LEVELS
    assert targets.SOFT + targets.SOFT_LEVELS < targets.TOUCH < targets.IGNORE


def test_loss_weights_the_touching_line_as_contact_with_three_classes_only():
    # Two pixels: a TOUCH one and a plain background one; uniform logits.
    target = torch.tensor([[[targets.TOUCH, targets.BACKGROUND]]])
    w3, w4 = torch.ones(3), torch.ones(4)
    three = loss_fn(torch.zeros(1, 3, 1, 2), target, w3, "ce", contact_weight=3)
    assert three.item() == pytest.approx(np.log(3), rel=1e-6)  # every pixel: log 3, any weights
    # Logits that favour background: the TOUCH pixel (background for 3 classes) costs
    # a = -log softmax(background), counted 3 times: (3a + a) / 4 = a.
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 2.0]])[None, :, None, :]
    a = -np.log(np.exp(2.0) / (2 + np.exp(2.0)))
    assert loss_fn(logits, target, w3, "ce", contact_weight=3).item() == pytest.approx(a, rel=1e-6)
    # With 4 classes the TOUCH pixel is the touch class (weight 1): (b + c) / 2 where b =
    # -log softmax(touch) and c = -log softmax(background).
    logits4 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 2.0], [1.0, 1.0]])[None, :, None, :]
    z = 2 + np.exp(2.0) + np.exp(1.0)
    b, c = -np.log(np.exp(1.0) / z), -np.log(np.exp(2.0) / z)
    assert loss_fn(logits4, target, w4, "ce", contact_weight=3).item() == pytest.approx((b + c) / 2, rel=1e-6)


def test_new_models_and_class_weights():
    net, info = new_model((4, 8), touch_class=True)
    assert net.config.n_classes == 4 and info.config.n_classes == 4
    assert new_model((4, 8))[0].config.n_classes == 3
    cfg = TrainConfig(class_weights=(1.5, 1.0, 0.6))
    assert class_weights(cfg, 3) == (1.5, 1.0, 0.6)
    assert class_weights(cfg, 4) == (1.5, 1.0, 0.6, 1.0)  # touch weighted as cytoplasm
    with pytest.raises(ValueError, match="4 class weights for a model with 3"):
        class_weights(TrainConfig(class_weights=(1, 1, 1, 2)), 3)


def test_touching_cells_share_their_border_with_a_touch_map():
    """Two 10 x 12 cells side by side. The network says seed in each centre, cytoplasm
    around, and 'touch' on the two columns where they meet. With the touch map the
    cells cover both rectangles entirely and part on the touch line; read as a 3-class
    output (touch added to background) the line is a gap."""
    h, w = 14, 28
    probs = np.zeros((4, h, w), np.float32)
    probs[2] = 1.0
    cells = np.zeros((h, w), bool)
    cells[2:12, 2:26] = True
    probs[:, cells] = 0
    probs[1, cells] = 1.0
    for c0 in (4, 18):  # seeds
        probs[1, 5:9, c0 : c0 + 6] = 0
        probs[0, 5:9, c0 : c0 + 6] = 1.0
    probs[:, 2:12, 13:15] = 0
    probs[3, 2:12, 13:15] = 1.0  # the touching line
    grid = Grid(0.5, 3.0)
    image = probs[0] + probs[1] + probs[3]
    four = Prediction(image, probs, image, grid).segment(min_cell_area=1.0)
    assert four.max() == 2
    assert np.array_equal(four > 0, cells)  # the line belongs to the cells
    assert (four[2:12, 2:14] == four[7, 5]).all() and (four[2:12, 14:26] == four[7, 20]).all()
    three = np.stack([probs[0], probs[1], probs[2] + probs[3]])
    gap = Prediction(image, three, image, grid).segment(min_cell_area=1.0)
    assert gap.max() == 2 and not gap[:, 13:15].any()


def test_a_four_class_model_trains_saves_and_segments(tmp_path):
    from napari_cellseg import predict
    from napari_cellseg.core import synthetic as syn
    from napari_cellseg.model.store import load_model
    from napari_cellseg.progress import drain
    from napari_cellseg.workflows.training import iter_train

    pairs = []
    for i in range(2):
        s = syn.make_whole_cell_image(seed=i, shape=(96, 96), cell_radius=7.0, stain="membrane")
        pairs.append((f"img{i}", s.image, s.labels))
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=2, patch=48, margin=4, lr=1e-2, device="cpu",
                      precision="fp32", touch_class=True)
    result = drain(iter_train(pairs, tmp_path / "touch", config=cfg, val_fraction=0, channels=(4, 8, 16)))
    net, info = load_model(result.path)
    assert net.config.n_classes == 4
    assert info.extra["train_config"]["touch_class"] is True
    pred = predict(pairs[0][1], model=(net, info), device="cpu")
    assert pred.probabilities.shape[0] == 4 and pred.touch_probability is not None
    np.testing.assert_allclose(pred.probabilities.sum(axis=0), 1.0, atol=1e-3)
    np.testing.assert_allclose(pred.foreground_probability, 1.0 - pred.background_probability, atol=1e-3)
    assert pred.segment().shape == pairs[0][1].shape
    # Fine-tuning keeps a 4-class model's classes.
    again = drain(iter_train(pairs, tmp_path / "ft", init=result.path, config=TrainConfig(
        **{**cfg.to_dict(), "touch_class": False}), val_fraction=0))
    assert load_model(again.path)[0].config.n_classes == 4
    # A 3-class model fine-tuned with the touch class grows the 4th output.
    three = drain(iter_train(pairs, tmp_path / "three", config=TrainConfig(
        **{**cfg.to_dict(), "touch_class": False}), val_fraction=0, channels=(4, 8, 16)))
    grown = drain(iter_train(pairs, tmp_path / "grown", init=three.path, config=cfg, val_fraction=0))
    net, info = load_model(grown.path)
    assert net.config.n_classes == 4 and info.extra["touch_class_added"] is True


def test_a_three_class_model_grows_a_touch_output_that_starts_from_its_answer():
    from napari_cellseg.model.train import add_touch_class

    torch.manual_seed(0)
    three, info = new_model((4, 8))
    three.eval()
    four, grown = add_touch_class(three, info)
    four.eval()
    assert four.config.n_classes == 4 and grown.config.n_classes == 4 and grown.extra["touch_class_added"]
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        a, b = three(x), four(x)
    torch.testing.assert_close(b[:, :3], a)  # the old outputs unchanged
    torch.testing.assert_close(b[:, 3], a[:, 2] - 4.0)  # touch = background's logit - 4
    p3, p4 = torch.softmax(a, 1), torch.softmax(b, 1)
    # seed and cytoplasm probabilities move by at most e^-4 ~ 1.8 % of themselves
    assert torch.all((p4[:, :2] - p3[:, :2]).abs() <= 0.02 * p3[:, :2] + 1e-6)
