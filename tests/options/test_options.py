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
