"""train.py on tiny synthetic crops: checkpoints and logs, exact resume, bad input, 2-process DDP."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from tests.paths import REPO_ROOT
from tests.synthetic_crops import CROP_SIZE, SPACING_MM, write_synthetic_cohort
from util.checkpoint import load_checkpoint
from util.fileio import write_json

TINY = ["--gpu_ids", "-1", "--num_threads", "0", "--ngf", "2", "--ndf", "4", "--mask_height", "16",
        "--hu_window", "-1000", "3000", "--no_progress", "--print_freq", "1", "--display_freq", "2",
        "--seed", "3", "--batch_size", "2", "--max_dataset_size", "3", "--n_epochs", "1", "--n_epochs_decay", "1"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_synthetic_cohort(tmp_path_factory.mktemp("train_cohort"))


def run_train(cohort: tuple[Path, Path], checkpoints: Path, name: str, *extra: str) -> int:
    dataroot, split = cohort
    return train.main(["--dataroot", str(dataroot), "--split_json", str(split), "--name", name,
                       "--checkpoints_dir", str(checkpoints), *TINY, *extra])


def loss_rows(folder: Path) -> list[dict[str, str]]:
    """Loss log rows without the wall-clock columns."""
    with open(folder / "loss_log.csv", newline="", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k not in ("time", "iter_time_s", "data_time_s")}
                for row in csv.DictReader(handle)]


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        for key, tensor in first[name].items():
            assert torch.equal(tensor, second[name][key]), f"{name}.{key} differs"


def test_short_run_writes_checkpoints_and_logs(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    assert run_train(cohort, tmp_path, "demo", "--val_freq", "1", "--save_epoch_freq", "1") == 0
    folder = tmp_path / "demo"
    for name in ("latest.pth", "1.pth", "2.pth", "opt.txt", "opt.json", "loss_log.csv", "val_log.csv",
                 "web/index.html"):
        assert (folder / name).is_file(), name
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert "fake_ct" in (folder / "web" / "index.html").read_text(encoding="utf-8")
    checkpoint = torch.load(folder / "latest.pth", weights_only=True)  # what the synthesis script does
    assert checkpoint["progress"] == {"epoch": 2, "epoch_iter": 2, "total_iters": 4, "epoch_done": True}
    assert set(checkpoint["model"]["nets"]) == {"G", "D_1", "D_2", "D_3"}
    assert set(checkpoint["model"]["optimizers"]) == {"G", "D_1", "D_2", "D_3"}
    assert checkpoint["options"]["name"] == "demo" and checkpoint["options"]["mask_height"] == 16.0
    # the crop geometry trained on, which predict.py straightens new scans with
    assert checkpoint["options"]["crop_size"] == list(CROP_SIZE)
    assert checkpoint["options"]["crop_spacing_mm"] == pytest.approx(list(SPACING_MM))
    assert len(checkpoint["rng"]) == 1 and {"python", "numpy", "torch"} <= set(checkpoint["rng"][0])  # one per rank
    rows = loss_rows(folder)
    assert [int(r["total_iters"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in rows] == [2e-4, 2e-4, 1e-4, 1e-4]  # linear decay after n_epochs
    assert all(float(r["G"]) > 0 for r in rows)
    with open(folder / "val_log.csv", newline="", encoding="utf-8") as handle:
        val = list(csv.DictReader(handle))
    assert len(val) == 2 and {"band_l1", "band_psnr", "dice", "height_error_mm"} <= set(val[0])
    assert 0 <= float(val[0]["dice"]) <= 1 and float(val[0]["height_error_mm"]) >= 0


def test_resume_equals_uninterrupted_training(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    deterministic = ["--deterministic", "--val_freq", "0"]
    assert run_train(cohort, tmp_path, "full", *deterministic) == 0
    # "killed" after iteration 3, with checkpoints after every iteration
    assert run_train(cohort, tmp_path, "cut", *deterministic, "--max_steps", "3", "--save_latest_freq", "1",
                     "--save_by_iter") == 0
    assert len(loss_rows(tmp_path / "cut")) == 3
    shutil.copytree(tmp_path / "cut", tmp_path / "cut_at_2")
    full = load_checkpoint(tmp_path / "full" / "latest.pth")
    # resume inside epoch 2 (iteration 3) and at the last batch of epoch 1 (before its LR step)
    for name, load_iter in (("cut", "3"), ("cut_at_2", "2")):
        assert run_train(cohort, tmp_path, name, *deterministic, "--continue_train", "--load_iter", load_iter) == 0
        resumed = load_checkpoint(tmp_path / name / "latest.pth")
        assert resumed["progress"] == full["progress"]
        assert_same_weights(full["model"]["nets"], resumed["model"]["nets"])
        assert loss_rows(tmp_path / name) == loss_rows(tmp_path / "full")


def test_bad_input_stops_with_one_line(cohort: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    split = tmp_path / "no_healthy.json"
    write_json(split, {"train": {"syn001_20": 3}, "val": {}, "test": {}})
    assert run_train((cohort[0], split), tmp_path, "bad") == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("train.py: error:") and "no_healthy.json" in error[-1]
    assert not (tmp_path / "bad" / "latest.pth").exists()
    assert run_train(cohort, tmp_path, "nockpt", "--continue_train") == 1
    assert "latest.pth: checkpoint not found" in capsys.readouterr().err


def train_two_gloo_ranks(dataroot: Path, split: Path, out: Path, flags: list[str]) -> tuple[dict, dict]:
    """Train 4 vertebrae with ``flags`` on two Gloo ranks (torchrun, ``tests/workers/ddp_train_worker.py``) into
    ``out/ddp``; assert both ranks end with the same weights; return the checkpoint and rank 0's saved state."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(REPO_ROOT / "tests" / "workers" / "ddp_train_worker.py"), str(out), "--dataroot", str(dataroot),
               "--split_json", str(split), "--name", "ddp", "--checkpoints_dir", str(out), *flags,
               "--max_dataset_size", "4", "--val_freq", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, encoding="utf-8", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert rank0["world_size"] == 2
    assert_same_weights(rank0["nets"], rank1["nets"])
    return load_checkpoint(out / "ddp" / "latest.pth"), rank0


@pytest.mark.slow
def test_two_process_gloo_ddp_gives_identical_weights(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    saved, rank0 = train_two_gloo_ranks(*cohort, tmp_path, TINY)
    # 4 vertebrae, 2 ranks x batch 2 -> 1 iteration per epoch, 2 epochs
    assert saved["progress"]["total_iters"] == 2
    assert_same_weights(saved["model"]["nets"], rank0["nets"])
    assert len(loss_rows(tmp_path / "ddp")) == 2
