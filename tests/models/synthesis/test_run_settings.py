"""The run's settings read once from the synthesis command line (models/synthesis/run_settings.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import eval_3d_sagittal_twostage as script
from models.synthesis.run_settings import SynthesisRunSettings


def test_command_line_becomes_typed_settings(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    opt = script.parse_options(["--dataroot", str(tmp_path / "crops"), "--name", "sag", "--results_dir",
                                str(tmp_path / "R"), "--plane", "both", "--name_coronal", "cor", "--cam_dir",
                                str(tmp_path / "maps"), "--split", "val,test", "--num_test", "3",
                                "--synthesis_batch_size", "0", "--protocol", "reference", "--no_iterative",
                                "--mask_height", "30", "--gpu_ids", "-1"])
    run = SynthesisRunSettings.from_options(opt)
    assert run.dataroot == tmp_path / "crops" and run.output_root == tmp_path / "R" / "sag"
    assert run.names == {"sagittal": "sag", "coronal": "cor"} and run.planes == ["sagittal", "coronal"]
    assert run.cam_dir == tmp_path / "maps" and run.num_test == 3 and run.batch_size == 0
    assert run.selects_splits and run.split_path == (tmp_path / "vertebra_data.json").resolve()
    assert run.flags.protocol == "reference" and not run.flags.iterative and run.flags.mask_height_mm == 30.0


def test_defaults_of_a_bare_namespace(tmp_path: Path) -> None:
    run = SynthesisRunSettings.from_options(argparse.Namespace(dataroot=str(tmp_path), name="n",
                                                               results_dir=str(tmp_path / "R")))
    assert run.names == {"sagittal": "n"} and run.cam_dir is None and run.num_test is None
    assert (run.epoch, run.load_iter, run.batch_size, run.overwrite) == ("latest", 0, -1, False)
    assert not run.selects_splits and run.flags.iterative and run.flags.protocol is None


def test_plane_both_needs_the_coronal_name_and_planes_are_checked(tmp_path: Path) -> None:
    base = {"dataroot": str(tmp_path), "name": "n", "results_dir": str(tmp_path)}
    with pytest.raises(ValueError, match="--plane both needs --name_coronal"):
        SynthesisRunSettings.from_options(argparse.Namespace(**base, plane="both"))
    with pytest.raises(ValueError, match="--plane 'axial'"):
        SynthesisRunSettings.from_options(argparse.Namespace(**base, plane="axial"))
