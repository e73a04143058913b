"""The published README's quick-start, run as its commands are written, in a folder laid out as it says.

The working directory is a temporary folder holding ``./dataset/raw/<case>/`` and
``./dataset/vertebra_data.json`` (a 3-case phantom cohort, T12-L4); every script is addressed by
its absolute path in this repository. Each published command runs with its words unchanged; what is
appended (and why) is listed in the test's docstring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.paths import REPO_ROOT

CROP_SIZE = (96, 64, 16)
DESIGN_METRICS = {"macro_precision", "macro_recall", "macro_f1", "accuracy"}


def run(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args`` in ``cwd`` on one CPU thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", check=False)


def volume(path: Path) -> np.ndarray:
    """The stored array of a NIfTI file, in its on-disk dtype."""
    return np.asanyarray(nib.load(str(path)).dataobj)


@pytest.mark.slow
def test_published_quickstart_runs_as_written(tmp_path: Path) -> None:
    """The published sequence, each command verbatim, with these additions only:

    * ``straighten/straighten_mask_3d.py --crop_size 96 64 16``: the default 256x256x64 crops make
      every later step ~40x slower on a CPU;
    * ``Attention/train_classifier.py --arch small --n_epochs 1 --n_epochs_decay 0 --gpu_ids -1``:
      not a published command (the published Attention step loads the authors' unreleased
      classifier), run after checking that ``grad_CAM_3d_sagittal.py`` without it says in one line
      which command to run first;
    * ``--gpu_ids -1`` on the network steps (CPU whatever the machine has);
    * ``train.py ... --ngf 4 --ndf 8 --num_threads 0 --max_steps 150 --val_freq 0 --no_progress``: the
      published 1000 epochs stop after 150 iterations of small networks, enough for segmentations the
      RHLV measurement accepts;
    * ``evaluation/SVM_grading.py --n_splits 2``: the 10-vertebra train+test pool has 2 vertebrae of
      each fractured grade, too few for 5 stratified folds.
    """
    done = run(tmp_path, "data/make_phantoms.py", "--out", "dataset", "--cases", "3", "--seed", "3",
               "--vertebrae", "T12-L4", "--spacing", "1.5", "1.5", "1.5", "--no_progress")
    assert done.returncode == 0, done.stderr
    split = json.loads((tmp_path / "dataset" / "vertebra_data.json").read_text(encoding="utf-8"))
    grades = {key: grade for part in split.values() for key, grade in part.items()}

    for script, extra in (("straighten/location_json_local.py", ()),
                          ("straighten/straighten_mask_3d.py", ("--crop_size", *map(str, CROP_SIZE)))):
        done = run(tmp_path, script, *extra)
        assert done.returncode == 0, f"{script}: {done.stderr}"
    crops = tmp_path / "dataset" / "straightened"
    assert sorted(p.name.removesuffix(".nii.gz") for p in (crops / "label").glob("*.nii.gz")) == sorted(grades)
    for key in grades:
        ct, label = volume(crops / "CT" / f"{key}.nii.gz"), volume(crops / "label" / f"{key}.nii.gz")
        assert (ct.dtype, label.dtype, ct.shape, label.shape) == (np.int16, np.uint8, CROP_SIZE, CROP_SIZE)
        target = int(key.rsplit("_", 1)[1])
        assert label[tuple(s // 2 for s in CROP_SIZE)] == target  # the target's body at the crop centre

    done = run(tmp_path, "Attention/grad_CAM_3d_sagittal.py", "--gpu_ids", "-1")
    assert done.returncode == 1 and not (tmp_path / "Attention" / "heatmap").exists()
    assert len(done.stderr.strip().splitlines()) == 1 and "python Attention/train_classifier.py" in done.stderr
    done = run(tmp_path, "Attention/train_classifier.py", "--arch", "small", "--n_epochs", "1",
               "--n_epochs_decay", "0", "--gpu_ids", "-1")
    assert done.returncode == 0, done.stderr
    done = run(tmp_path, "Attention/grad_CAM_3d_sagittal.py", "--gpu_ids", "-1")
    assert done.returncode == 0, done.stderr
    for key in grades:
        cam = volume(tmp_path / "Attention" / "heatmap" / f"{key}.nii.gz")
        assert cam.dtype == np.float32 and cam.shape == CROP_SIZE
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        assert (tmp_path / "Attention" / "heatmap" / f"{key}.png").is_file()

    done = run(tmp_path, "train.py", "--dataroot", "./dataset/straightened", "--name", "HealthiVert_experiment",
               "--model", "pix2pix", "--direction", "BtoA", "--batch_size", "16", "--n_epochs", "1000",
               "--gpu_ids", "-1", "--ngf", "4", "--ndf", "8", "--num_threads", "0", "--max_steps", "150",
               "--val_freq", "0", "--no_progress")
    assert done.returncode == 0, done.stderr
    assert "attention maps from Attention/heatmap" in done.stderr
    assert (tmp_path / "checkpoints" / "HealthiVert_experiment" / "latest.pth").is_file()

    done = run(tmp_path, "eval_3d_sagittal_twostage.py", "--gpu_ids", "-1")
    assert done.returncode == 0, done.stderr
    output = tmp_path / "output"
    for key in grades:
        ct_fake = volume(output / "CT_fake" / f"{key}.nii.gz")
        label_fake = volume(output / "label_fake" / f"{key}.nii.gz")
        assert (ct_fake.dtype, label_fake.dtype, ct_fake.shape) == (np.int16, np.uint8, CROP_SIZE)
        assert (label_fake == int(key.rsplit("_", 1)[1])).sum() > 0
        provenance = json.loads((output / "provenance" / f"{key}.json").read_text(encoding="utf-8"))
        assert Path(provenance["options"]["cam_dir"]) == (tmp_path / "Attention" / "heatmap").resolve()
    assert not (tmp_path / "results").exists()

    done = run(tmp_path, "evaluation/RHLV_quantification.py")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "evaluation" / "RHLV_quantification" / "rhlv.csv")
    assert sorted(table["Vertebra"]) == sorted(grades)
    assert dict(zip(table["Vertebra"], table["Label"])) == grades
    assert np.isfinite(table[["All RHLV", "Pre RHLV", "Mid RHLV", "Post RHLV"]].to_numpy()).all()

    done = run(tmp_path, "evaluation/SVM_grading.py", "--n_splits", "2")
    assert done.returncode == 0, done.stderr
    grading = tmp_path / "evaluation" / "classification_metric" / "grading.json"
    report = json.loads(grading.read_text(encoding="utf-8"))
    assert len(report["folds"]) == 2
    assert set(report["mean"]) >= DESIGN_METRICS and set(report["variance"]) >= DESIGN_METRICS
    assert all(0.0 <= report["mean"][k] <= 1.0 for k in DESIGN_METRICS)

    done = run(tmp_path, "evaluation/generation_eval_sagittal.py")
    assert done.returncode == 0, done.stderr
    metrics = pd.read_csv(tmp_path / "evaluation" / "generation_metric" / "generation_sagittal.csv")
    healthy_val = sorted(k for k, g in split["val"].items() if g == 0)
    assert sorted(metrics["Vertebra"]) == healthy_val
    assert np.isfinite(metrics.select_dtypes("number").to_numpy()).all()


@pytest.mark.parametrize("argv, output_dir, name", [
    ([], "output", "HealthiVert_experiment"),
    (["--name", "N"], "results/N", "N"),
    (["--results_dir", "R"], "R/HealthiVert_experiment", "HealthiVert_experiment"),
    (["--results_dir", "R", "--name", "N"], "R/N", "N"),
    (["--output_dir", "O", "--name", "N"], "O", "N"),
])
def test_synthesis_output_folder_rule(tmp_path: Path, monkeypatch, argv: list[str], output_dir: str,
                                      name: str) -> None:
    """``./output`` only when none of --results_dir/--name/--output_dir is given; else <results_dir>/<name>."""
    import eval_3d_sagittal_twostage as script
    from models.synthesis.outputs import synthesis_dir

    monkeypatch.chdir(tmp_path)
    opt = script.parse_options(argv)
    assert (synthesis_dir(opt), opt.name) == (Path(output_dir), name)
    assert Path(opt.dataroot) == Path("dataset/straightened") and opt.cam_dir is None


def test_published_attention_folder_is_used_only_with_the_published_dataroot(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    import eval_3d_sagittal_twostage as script
    from Attention.cam import parse_cam_options
    from options.train_options import TrainOptions

    monkeypatch.chdir(tmp_path)
    assert parse_cam_options([]).out == Path("Attention/heatmap")
    assert parse_cam_options(["--dataroot", "data/straightened"]).out == Path("data/heatmap")
    (tmp_path / "Attention" / "heatmap").mkdir(parents=True)
    assert script.parse_options([]).cam_dir == "Attention/heatmap"
    assert "attention maps from Attention/heatmap" in capsys.readouterr().err
    train = TrainOptions().parse(["--dataroot", "./dataset/straightened"], save=False)
    assert train.cam_dir == "Attention/heatmap" and train.name == "HealthiVert_experiment"
    assert TrainOptions().parse(["--dataroot", "elsewhere/straightened"], save=False).cam_dir is None
    assert script.parse_options(["--cam_dir", "Attention"]).cam_dir == "Attention"
