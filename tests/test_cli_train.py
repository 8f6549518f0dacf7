"""Training and fine-tuning from the CLI; the dense set when ../shared has it."""

import numpy as np
import pytest
import tifffile
import torch

from napari_cellseg import cli
from napari_cellseg.core import synthetic as syn


@pytest.fixture
def pairs(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(2):
        s = syn.make_whole_cell_image(seed=i, shape=(96, 96), cell_radius=7, stain="membrane")
        tifffile.imwrite(folder / f"img{i}.tif", s.image)
        tifffile.imwrite(folder / f"img{i}_masks.tif", s.labels.astype(np.uint16))
    return folder


def test_train_resume_and_fine_tune(pairs, tmp_path, capsys):
    from napari_cellseg.model.store import load_model

    out = tmp_path / "m.safetensors"
    common = ["--images", pairs, "--masks", pairs, "--patch", "48", "--batch", "2",
              "--steps-per-epoch", "2", "--channels", "4,8,16", "--synthetic", "1"]
    assert cli.main(["train", *map(str, common), "--out", str(out), "--epochs", "1"]) == 0
    assert out.exists() and out.with_suffix(".ckpt").exists()
    _model, info = load_model(out)
    assert info.config.channels == (4, 8, 16)
    assert info.extra["epochs_run"] == 1
    # Resume to 2 epochs: continues at epoch 2, does not restart.
    assert cli.main(["train", *map(str, common), "--out", str(out), "--epochs", "2", "--resume",
                     "--overwrite"]) == 0
    text = capsys.readouterr().out
    assert "epoch   2/2" in text and "epoch   1/2" not in text
    # Fine-tune from the saved model, with graded seed targets.
    tuned = tmp_path / "tuned.safetensors"
    assert cli.main(["train", *map(str, common), "--out", str(tuned), "--epochs", "1", "--init", str(out),
                     "--seed-target", "soft", "--minutes", "5", "--freeze-norm", "--scale-jitter", "0.7,1.4",
                     "--blur", "1.5", "--scale-p", "0.25", "--blur-p", "0.15", "--synthetic-nuclei", "2",
                     "--synthetic-fraction", "0.3"]) == 0
    tuned_info = load_model(tuned)[1]
    assert tuned_info.extra["synthetic_images"] == {"whole_cell": 1, "nuclei": 2}
    assert tuned_info.extra["train_config"]["synthetic_fraction"] == 0.3
    assert tuned_info.config.channels == (4, 8, 16)
    assert tuned_info.extra["train_config"]["seed_target"] == "soft"
    assert tuned_info.extra["train_config"]["time_budget_s"] == 300.0
    assert tuned_info.extra["train_config"]["freeze_norm"] is True
    assert tuned_info.extra["train_config"]["scale_jitter"] == [0.7, 1.4]
    assert tuned_info.extra["train_config"]["blur"] == 1.5
    assert tuned_info.extra["train_config"]["scale_p"] == 0.25 and tuned_info.extra["train_config"]["blur_p"] == 0.15
    assert tuned_info.extra["fine_tuned_from"]["name"] == "m"
    assert [r["name"] for r in tuned_info.extra["trained_on"]] == ["img0", "img1"]
    # The fine-tune scored its start first; the last line says whether an epoch beat it.
    start = tuned_info.extra["start_val_mAP"]
    beaten = tuned_info.extra["history_tail"][-1]["val_mAP"] > start
    text = capsys.readouterr().out
    assert f"starting model scores val AP {start:.3f}" in text
    assert "(+3 synthetic)" in text  # 1 whole-cell image and 2 of nuclei
    assert ("no epoch beat the starting model" in text) != beaten
    assert ("best epoch by validation" in text) == beaten
    # No silent overwrite.
    assert cli.main(["train", *map(str, common), "--out", str(out), "--epochs", "1"]) == 2
    # Nor of an earlier run's best epoch or checkpoint, which a new run deleted unsaid.
    out.unlink()
    kept = out.with_name("m.best.safetensors")
    kept.write_bytes(b"an earlier run's best epoch")
    capsys.readouterr()
    assert cli.main(["train", *map(str, common), "--out", str(out), "--epochs", "1"]) == 2
    assert "pass --resume to continue it, or --overwrite" in capsys.readouterr().err
    assert kept.read_bytes() == b"an earlier run's best epoch" and not out.exists()
    # A malformed zoom range is named, not a traceback.
    assert cli.main(["train", *map(str, common), "--out", str(tmp_path / "z"), "--scale-jitter", "2"]) == 2
    assert "--scale-jitter must be LO,HI" in capsys.readouterr().err
    assert cli.main(["train", *map(str, common), "--out", str(tmp_path / "z"), "--scale-jitter", "1.6,0.6"]) == 2
    assert "0 < LO <= HI" in capsys.readouterr().err
    for bad in ("0.3", "nan", "-1"):  # refused before any image is read, in words
        assert cli.main(["train", *map(str, common), "--out", str(tmp_path / "z"), "--blur", bad]) == 2
        assert "--blur must be 0 (off) or a sigma of at least 0.5 px" in capsys.readouterr().err
    # A negative count is refused in words (it would have cut the whole-cell images short).
    assert cli.main(["train", *map(str, common), "--out", str(tmp_path / "z"), "--synthetic-nuclei", "-1"]) == 2
    assert "synthetic_nuclei must be a number of images (an integer >= 0), got -1" in capsys.readouterr().err
    assert not (tmp_path / "z.safetensors").exists()
    for flag in ("--scale-p", "--blur-p", "--synthetic-fraction"):
        assert cli.main(["train", *map(str, common), "--out", str(tmp_path / "z"), flag, "1.5"]) == 2
        assert f"{flag} must be a share of the patches in [0, 1], got 1.5" in capsys.readouterr().err


def test_train_on_every_pixel(pairs, tmp_path, capsys, monkeypatch):
    """--val-fraction 0: whole images in training, no validation, no 'best' file."""
    from napari_cellseg.model.store import load_model
    from napari_cellseg.workflows import training as workflow

    seen = []
    real_train = workflow.train

    def spy(model, train_examples, val_examples=(), *args, **kwargs):
        seen.append(([e.image.shape for e in train_examples], len(val_examples), kwargs.get("validate")))
        return real_train(model, train_examples, val_examples, *args, **kwargs)

    monkeypatch.setattr(workflow, "train", spy)
    out = tmp_path / "all.safetensors"
    common = ["--images", str(pairs), "--masks", str(pairs), "--patch", "48", "--batch", "2",
              "--steps-per-epoch", "2", "--channels", "4,8,16", "--synthetic", "0", "--epochs", "1"]
    assert cli.main(["train", *common, "--out", str(out), "--val-fraction", "0"]) == 0
    assert seen == [([(96, 96), (96, 96)], 0, None)]
    assert "no validation" in capsys.readouterr().out
    assert out.exists() and not out.with_name("all.best.safetensors").exists()
    info = load_model(out)[1]
    assert "val_mAP" not in info.extra["history_tail"][-1]
    assert info.extra["val_fraction"] == 0  # a benchmark can tell that every pixel was trained on
    # The default holds out the right 20 %: 77 of 96 columns are trained on.
    assert cli.main(["train", *common, "--out", str(tmp_path / "split")]) == 0
    assert seen[1][:2] == ([(96, 77), (96, 77)], 2)
    assert cli.main(["train", *common, "--out", str(tmp_path / "bad"), "--val-fraction", "1"]) == 2
    assert "--val-fraction must be in [0, 1)" in capsys.readouterr().err
    # Band 2 of 4 held out (columns 24-48 of 96): the parts left and right of it train,
    # the band validates, and the model records which band it never saw.
    assert cli.main(["train", *common, "--out", str(tmp_path / "band"), "--val-band", "2/4"]) == 0
    assert seen[2][:2] == ([(96, 24), (96, 48), (96, 24), (96, 48)], 2)
    assert "validating on band 2 of 4" in capsys.readouterr().out
    assert load_model(tmp_path / "band.safetensors")[1].extra["val_band"] == [1, 4]
    for bad in ("5/4", "2", "0/4", "x/y"):
        assert cli.main(["train", *common, "--out", str(tmp_path / "bad"), "--val-band", bad]) == 2
        assert "--val-band" in capsys.readouterr().err
    # --touch-class: a new network with a 4th output; a 3-class --init model grows one.
    assert cli.main(["train", *common, "--out", str(tmp_path / "touch"), "--touch-class"]) == 0
    assert load_model(tmp_path / "touch.safetensors")[0].config.n_classes == 4
    assert cli.main(["train", *common, "--out", str(tmp_path / "t2"), "--touch-class", "--init", str(out)]) == 0
    grown, grown_info = load_model(tmp_path / "t2.safetensors")
    assert grown.config.n_classes == 4 and grown_info.extra["touch_class_added"] is True


def test_unpaired_training_files_are_named(pairs, tmp_path, capsys):
    (pairs / "lonely.tif").write_bytes((pairs / "img0.tif").read_bytes())
    assert cli.main(["train", "--images", str(pairs), "--masks", str(pairs), "--out", str(tmp_path / "x")]) == 2
    assert "lonely" in capsys.readouterr().err


def test_dense_set_pairs_up(dense_dir):
    from napari_cellseg.io import load_pairs

    pairs = load_pairs(dense_dir, dense_dir)
    assert len(pairs) == 7
    assert sum(len(np.unique(lab)) - 1 for _, _, lab in pairs) == 10106
    for _, image, labels in pairs:
        assert image.shape == labels.shape == (1040, 1159)
        assert image.max() > 0


def test_a_new_network_from_the_cli_is_the_default_models():
    """The CLI's --channels default is the library's (a new network in the Train widget and
    every cross-validated recipe), and the default model's architecture."""
    from napari_cellseg.model.store import load_model
    from napari_cellseg.model.unet import LIGHT_CHANNELS

    args = cli.build_parser().parse_args(["train", "--images", "a", "--masks", "a", "--out", "m"])
    assert tuple(int(c) for c in args.channels.split(",")) == LIGHT_CHANNELS
    assert load_model()[1].config.channels == LIGHT_CHANNELS


def test_training_takes_the_pixel_size_its_files_state_and_repeats_from_scratch(pairs, tmp_path, capsys):
    """Calibrated training images were trained at 0.5 µm whatever they stated (0.25
    here), so the model halved every calibrated image it met afterwards; and a model from
    scratch got other weights on every run with the same seed."""
    from napari_cellseg.model.store import load_model

    calibrated = tmp_path / "cal"
    calibrated.mkdir()
    for image in sorted(pairs.glob("img?.tif")):
        tifffile.imwrite(calibrated / image.name, tifffile.imread(image), imagej=True,
                         resolution=(4.0, 4.0), metadata={"unit": "um"})  # 0.25 µm per pixel
        (calibrated / image.name.replace(".tif", "_masks.tif")).write_bytes(
            (pairs / image.name.replace(".tif", "_masks.tif")).read_bytes())
    common = ["--images", str(calibrated), "--masks", str(calibrated), "--patch", "48", "--batch", "2",
              "--steps-per-epoch", "1", "--channels", "4,8,16", "--synthetic", "0", "--epochs", "1"]
    assert cli.main(["train", *common, "--out", str(tmp_path / "a")]) == 0
    assert "pixel size 0.25 µm, from the images' metadata" in capsys.readouterr().out
    a = load_model(tmp_path / "a.safetensors")
    assert a[1].pixel_size == 0.25
    assert cli.main(["train", *common, "--out", str(tmp_path / "b")]) == 0
    b = load_model(tmp_path / "b.safetensors")
    for (name, wa), wb in zip(a[0].state_dict().items(), b[0].state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    # Sizes that disagree are refused in words, before any training.
    tifffile.imwrite(calibrated / "img1.tif", tifffile.imread(pairs / "img1.tif"), imagej=True,
                     resolution=(2.0, 2.0), metadata={"unit": "um"})
    assert cli.main(["train", *common, "--out", str(tmp_path / "c")]) == 2
    assert "state different pixel sizes (img0: 0.25 µm, img1: 0.5 µm)" in capsys.readouterr().err
    assert cli.main(["train", *common, "--out", str(tmp_path / "c"), "--pixel-size", "0.3"]) == 0
    assert load_model(tmp_path / "c.safetensors")[1].pixel_size == 0.3  # the size given wins


def test_the_user_model_folder_is_expanded(monkeypatch, tmp_path):
    from napari_cellseg.model.registry import user_model_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NAPARI_CELLSEG_MODELS", "~/models")
    assert user_model_dir() == tmp_path / "models"


def test_best_epoch_names_are_not_model_names():
    from napari_cellseg.model.registry import user_model_path

    with pytest.raises(ValueError, match="kept for a training run's best epoch"):
        user_model_path("mine.best")
    assert user_model_path("mine").name == "mine.safetensors"
