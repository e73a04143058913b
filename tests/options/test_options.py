"""pix2pix-style options: every flag in --help, model/dataset flags merged, options saved as text and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from options.test_options import TestOptions
from options.train_options import TrainOptions

DESIGN_FLAGS = ["--dataroot", "--name", "--gpu_ids", "--checkpoints_dir", "--batch_size", "--n_epochs",
                "--n_epochs_decay", "--lr", "--beta1", "--gan_mode", "--continue_train", "--epoch",
                "--num_threads", "--seed", "--split_json", "--cam_dir", "--plane", "--mask_height",
                "--deterministic", "--max_healthy_grade", "--hu_window", "--cache_dir", "--amp", "--ngf"]


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        TrainOptions().parse(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    missing = [flag for flag in DESIGN_FLAGS if flag not in text]
    assert not missing, missing
    parser = TrainOptions().build_parser(["--dataroot", "."])
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented, undocumented


def test_train_options_are_saved_as_text_and_json(tmp_path: Path) -> None:
    opt = TrainOptions().parse(["--dataroot", "d", "--name", "exp", "--checkpoints_dir", str(tmp_path),
                                "--gpu_ids", "-1", "--mask_height", "30", "--plane", "coronal",
                                "--suffix", "{plane}"])
    assert opt.isTrain and opt.name == "exp_coronal" and opt.gpu_ids == []
    assert opt.mask_height == 30.0 and opt.max_dataset_size == math.inf
    saved = json.loads((tmp_path / "exp_coronal" / "opt.json").read_text(encoding="utf-8"))
    assert saved["mask_height"] == 30.0 and saved["plane"] == "coronal" and saved["hu_window"] == [-300.0, 800.0]
    text = (tmp_path / "exp_coronal" / "opt.txt").read_text(encoding="utf-8")
    assert "mask_height: 30.0" in text and "[default: 40.0]" in text


def test_test_options_and_bad_values(tmp_path: Path) -> None:
    opt = TestOptions().parse(["--dataroot", "d", "--checkpoints_dir", str(tmp_path), "--name", "t"])
    assert not opt.isTrain and opt.phase == "test" and opt.results_dir == "./results/"
    saved = json.loads((tmp_path / "t" / "test_opt.json").read_text(encoding="utf-8"))
    assert (saved["phase"], saved["name"], saved["dataroot"]) == ("test", "t", "d")
    with pytest.raises(SystemExit):
        TrainOptions().parse(["--dataroot", "d", "--plane", "axial"], save=False)
    with pytest.raises(SystemExit):
        TrainOptions().parse(["--dataroot", "d", "--batch_size", "0"], save=False)


def test_model_settings_from_the_training_flags_have_the_documented_defaults() -> None:
    """docs/design.md, 'Discriminators and losses' / AOT-GAN baseline: the published values at batch 1."""
    from models.aotgan_model import AOTGANSettings
    from models.base_model import ModelRunSettings, ScheduleSettings
    from models.healthivert_model import HealthiVertSettings

    opt = TrainOptions().parse(["--dataroot", ".", "--gpu_ids", "-1"], save=False)
    model = HealthiVertSettings.from_options(opt)
    assert (model.ngf, model.mask_height_mm, model.ndf, model.n_layers_D, model.norm) == (16, 40.0, 64, 3, "batch")
    assert (model.lambda_GAN, model.lambda_L1, model.lambda_dice_coarse, model.lambda_dice_fine) == \
        (pytest.approx(1 / 6), 200.0, 10.0, 15.0)
    assert (model.lambda_edge, model.lambda_height, model.lambda_gp, model.local_width) == (800.0, 40.0, 10.0, 70)
    assert model.gan_mode == "vanilla" and model.crop_spacing_mm is None
    assert ScheduleSettings.from_options(opt) == ScheduleSettings(2e-4, 0.5, "linear", 50, 200, 800, 1)
    run = ModelRunSettings.from_options(opt)
    assert run.is_train and run.gpu_ids == [] and run.epoch == "latest" and run.load_iter == 0
    assert not run.continue_train
    changed = TrainOptions().parse(["--dataroot", ".", "--gpu_ids", "-1", "--lr", "1e-3", "--lambda_edge", "5",
                                    "--n_epochs", "3", "--mask_height", "30"], save=False)
    assert ScheduleSettings.from_options(changed).lr == 1e-3 and ScheduleSettings.from_options(changed).n_epochs == 3
    assert HealthiVertSettings.from_options(changed).lambda_edge == 5.0
    assert HealthiVertSettings.from_options(changed).mask_height_mm == 30.0
    aot = AOTGANSettings.from_options(TrainOptions().parse(["--dataroot", ".", "--gpu_ids", "-1", "--model",
                                                            "aotgan"], save=False))
    assert (aot.ngf, aot.aot_blocks, aot.aot_rates, aot.mask_height_mm) == (64, 8, (1, 2, 4, 8), 40.0)
    assert (aot.lambda_L1, aot.lambda_adv, aot.lambda_dice_fine, aot.lambda_perceptual, aot.lambda_style) == \
        (1.0, 0.01, 15.0, 0.1, 250.0)
    assert aot.vgg19_weights is None and aot.sm_sigma == 10.0


def test_shared_flags_are_defined_once_for_model_and_dataset() -> None:
    """--mask_height and the schedule flags come from one definition whichever parser adds them first."""
    import argparse

    import models
    from data.aligned_dataset import AlignedDataset

    for name in ("healthivert", "aotgan"):
        model_first = models.get_option_setter(name)(argparse.ArgumentParser(), True)
        AlignedDataset.modify_commandline_options(model_first, True)
        dataset_only = AlignedDataset.modify_commandline_options(argparse.ArgumentParser(), True)
        for parser in (model_first, dataset_only):
            action = parser._option_string_actions["--mask_height"]
            assert (action.default, action.type) == (40.0, float)
    schedule_flags = ["--lr", "--beta1", "--lr_policy", "--lr_decay_iters", "--n_epochs", "--n_epochs_decay",
                      "--epoch_count"]
    from_model = models.get_option_setter("healthivert")(argparse.ArgumentParser(), True)
    from_training = TrainOptions().build_parser(["--dataroot", "."])
    for flag in schedule_flags:
        model_action, train_action = from_model._option_string_actions[flag], from_training._option_string_actions[flag]
        assert (model_action.default, model_action.type, model_action.choices, model_action.help) == \
            (train_action.default, train_action.type, train_action.choices, train_action.help)
