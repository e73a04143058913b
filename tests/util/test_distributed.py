"""GPU and multi-process paths reproduced on CPU: device per rank, resume, per-rank RNG, no hangs.

Multi-process tests start the ranks directly (RANK/WORLD_SIZE/MASTER_* set by hand, Gloo), without
torchrun's agent, which would kill the waiting ranks and hide a hang.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from models import training
from options.train_options import TrainOptions
from tests.paths import REPO_ROOT
from tests.synthetic_crops import write_synthetic_cohort
from util import distributed
from util.checkpoint import (
    Progress,
    load_checkpoint,
    rank_rng_states,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from util.distributed import DistributedContext, LaunchEnvironment, gpu_for_this_process
from util.fileio import read_json, write_json

TINY = ["--gpu_ids", "-1", "--num_threads", "0", "--ngf", "2", "--ndf", "4", "--mask_height", "16",
        "--hu_window", "-1000", "3000", "--no_progress", "--print_freq", "1", "--display_freq", "100",
        "--seed", "3", "--batch_size", "1", "--max_dataset_size", "2", "--n_epochs", "1", "--n_epochs_decay", "0",
        "--no_html", "--no_tensorboard"]
HANG_TIMEOUT_S = 240  # a hang shows as this timeout; a working run ends long before


FAULT_WORKER = REPO_ROOT / "tests" / "workers" / "ddp_fault_worker.py"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_synthetic_cohort(tmp_path_factory.mktemp("ddp_cohort"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(script: Path, args: list[str], world_size: int = 2, extra_env: dict[str, str] | None = None,
              ) -> list[subprocess.CompletedProcess]:
    """Start ``world_size`` Gloo ranks of ``script`` and wait for all (each killed after HANG_TIMEOUT_S)."""
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "LOCAL_WORLD_SIZE": str(world_size), **(extra_env or {})}
        procs.append(subprocess.Popen([sys.executable, str(script), *args], cwd=REPO_ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8"))
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=HANG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            pytest.fail(f"rank {procs.index(proc)} still running after {HANG_TIMEOUT_S} s: the job hangs")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def train_args(cohort: tuple[Path, Path], checkpoints: Path, name: str, *extra: str) -> list[str]:
    dataroot, split = cohort
    return ["--dataroot", str(dataroot), "--split_json", str(split), "--name", name,
            "--checkpoints_dir", str(checkpoints), *TINY, *extra]


# ---------------------------------------------------------------- one device per rank
class FakeCuda:
    """``torch.cuda`` answers of a machine with ``count`` GPUs; records ``set_device``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.current: list[int] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: self.current.append(int(device)))


def torchrun_env(monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int) -> None:
    for key, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world_size,
                       "LOCAL_WORLD_SIZE": world_size}.items():
        monkeypatch.setenv(key, str(value))


def test_default_gpu_ids_give_each_torchrun_rank_its_own_gpu(monkeypatch: pytest.MonkeyPatch,
                                                              cohort: tuple[Path, Path]) -> None:
    cuda = FakeCuda(monkeypatch, 2)
    devices = []
    for rank in range(2):
        torchrun_env(monkeypatch, rank, 2)
        opt = TrainOptions().parse(["--dataroot", str(cohort[0])], save=False)  # default --gpu_ids
        devices.append(distributed.resolve_device(opt.gpu_ids))
    assert devices == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert cuda.current == [0, 1]  # each rank made its GPU current before using CUDA


def test_explicit_gpu_is_made_current(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch, 2)
    torchrun_env(monkeypatch, 0, 1)
    assert distributed.resolve_device("1") == torch.device("cuda", 1)
    assert cuda.current == [1]  # --gpu_ids 1 never touches GPU 0


@pytest.mark.parametrize("ids, launch, cuda, count, message", [
    ([0], LaunchEnvironment(1, 2, 1, 2), True, 2, "names 1 GPU(s) for 2 torchrun ranks"),
    ([0, 1], LaunchEnvironment(0, 1, 0, 1), True, 2, "single process: start one process per GPU with 'torchrun"),
    ([0], LaunchEnvironment(0, 1, 0, 1), False, 0, "CUDA is not available"),
    ([3], LaunchEnvironment(0, 1, 0, 1), True, 2, "GPU 3 does not exist"),
])
def test_impossible_gpu_requests_are_one_line_errors(ids, launch, cuda, count, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        gpu_for_this_process(ids, launch, cuda, count)
    assert "\n" not in str(err.value)


def test_gpu_ids_1_2_under_two_ranks_picks_the_local_rank_entry() -> None:
    assert gpu_for_this_process([2, 3], LaunchEnvironment(1, 2, 1, 2), True, 4) == 3


def test_cuda_requested_without_cuda_stops_train_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                               cohort: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    FakeCuda(monkeypatch, 0)
    args = train_args(cohort, tmp_path, "nocuda")
    args[args.index("--gpu_ids") + 1] = "0"
    assert train.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.py: error: --gpu_ids 0: CUDA is not available")


# ---------------------------------------------------------------- resume
def test_resume_reads_the_checkpoint_on_cpu_whatever_the_run_device(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """The trainer's device (here ``meta``, standing in for CUDA) must not receive the checkpoint:
    its NumPy RNG key tensor has to stay on the CPU (the GPU resume crash)."""
    assert train.main(train_args(cohort, tmp_path, "meta", "--max_steps", "1")) == 0
    opt = TrainOptions().parse(train_args(cohort, tmp_path, "meta", "--continue_train", "--max_steps", "2"),
                               save=False)
    trainer = training.Trainer(opt, DistributedContext(0, 1, torch.device("meta")))
    assert trainer.resumed and trainer.progress.total_iters == 1


def test_each_rank_restores_its_own_rng_state(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    from models import create_model

    opt = TrainOptions().parse(train_args(cohort, tmp_path, "rng"), save=False)
    model = create_model(opt)
    model.setup(opt, load=False)
    states = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        states.append(rng_state())
    save_checkpoint(tmp_path / "rng.pth", model, Progress(1, 1, 1), {}, states)
    checkpoint = load_checkpoint(tmp_path / "rng.pth")
    assert len(rank_rng_states(checkpoint)) == 2
    for rank in (1, 0):
        torch.manual_seed(99)
        restore_checkpoint(checkpoint, model, rank=rank)
        assert torch.equal(torch.get_rng_state(), states[rank]["torch"])
    torch.manual_seed(99)
    before = torch.get_rng_state()
    restore_checkpoint(checkpoint, model, rank=2)  # resumed on more ranks than saved: keeps its seeded state
    assert torch.equal(torch.get_rng_state(), before)


def test_version_1_rng_with_one_cuda_state_per_gpu_restores_on_fewer_gpus() -> None:
    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 4  # saved on 4 GPUs, resumed on the CPU
    set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state["torch"])


# ---------------------------------------------------------------- SyncBatchNorm and WGAN-GP
def test_wgangp_critics_keep_plain_batchnorm_under_ddp(cohort: tuple[Path, Path]) -> None:
    cuda = torch.device("cuda", 0)
    wgan = TrainOptions().parse(["--dataroot", str(cohort[0]), "--gpu_ids", "-1", "--gan_mode", "wgangp"], save=False)
    vanilla = TrainOptions().parse(["--dataroot", str(cohort[0]), "--gpu_ids", "-1"], save=False)
    assert not training.uses_sync_batchnorm("D_1", wgan, cuda) and training.uses_sync_batchnorm("G", wgan, cuda)
    assert training.uses_sync_batchnorm("D_1", vanilla, cuda)
    assert not training.uses_sync_batchnorm("D_1", vanilla, torch.device("cpu"))


# ---------------------------------------------------------------- no hangs (2 Gloo processes)
@pytest.mark.slow
def test_validation_split_failing_on_rank0_does_not_hang(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """Rank 0 fails to build the validation set first; every rank must disable validation and train on."""
    results = run_ranks(REPO_ROOT / "train.py", train_args(cohort, tmp_path, "noval", "--val_phase", "nosuch",
                                                      "--val_freq", "1"))
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-2000:] + results[1].stderr[-2000:]
    assert "validation disabled" in results[0].stderr
    assert load_checkpoint(tmp_path / "noval" / "latest.pth")["progress"]["total_iters"] == 1


@pytest.mark.slow
def test_bad_train_split_ends_every_rank_with_the_message(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """Rank 0 fails to build the training set while rank 1 waits for it: both end with rank 0's message."""
    no_train = tmp_path / "no_train.json"
    write_json(no_train, {**read_json(cohort[1]), "train": {}})
    args = train_args(cohort, tmp_path, "badsplit")
    args[args.index("--split_json") + 1] = str(no_train)
    for result in run_ranks(REPO_ROOT / "train.py", args):
        assert result.returncode == 1, result.stderr[-2000:]
        assert "train.py: error:" in result.stderr and "split 'train' lists no vertebra" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fail_rank, fail_at", [("1", "model"), ("0", "save")])
def test_forced_failure_on_one_rank_ends_both_with_its_message(cohort: tuple[Path, Path], tmp_path: Path,
                                                               fail_rank: str, fail_at: str) -> None:
    results = run_ranks(FAULT_WORKER, train_args(cohort, tmp_path, "fault"),
                        extra_env={"FAIL_RANK": fail_rank, "FAIL_AT": fail_at})
    for result in results:
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"train.py: error: forced failure on rank {fail_rank}" in result.stderr


@pytest.mark.slow
def test_failure_inside_a_training_step_ends_both_ranks(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """Rank 1 fails while rank 0 waits in a DDP all-reduce: both must end (no 30-min Gloo wait)."""
    results = run_ranks(FAULT_WORKER, train_args(cohort, tmp_path, "stepfault"),
                        extra_env={"FAIL_RANK": "1", "FAIL_AT": "step"})
    assert all(r.returncode != 0 for r in results)
    assert "train.py: error: forced failure on rank 1" in results[1].stderr


@pytest.mark.slow
def test_two_rank_checkpoint_holds_both_ranks_rng_and_resumes_on_one(cohort: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    results = run_ranks(REPO_ROOT / "train.py", train_args(cohort, tmp_path, "ranks", "--max_steps", "1"))
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-2000:]
    checkpoint = load_checkpoint(tmp_path / "ranks" / "latest.pth")
    states = rank_rng_states(checkpoint)
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])  # seeded seed + rank
    opt = TrainOptions().parse(train_args(cohort, tmp_path, "ranks", "--continue_train", "--max_steps", "2"),
                               save=False)
    trainer = training.Trainer(opt, DistributedContext(0, 1, torch.device("cpu")))  # fewer processes than saved
    assert trainer.progress.total_iters == 1
    assert torch.equal(torch.get_rng_state(), states[0]["torch"])


def test_the_cpu_is_the_default_and_what_auto_gives_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device() == torch.device("cpu")
    assert distributed.resolve_device("-1") == distributed.resolve_device(None) == torch.device("cpu")
    assert distributed.resolve_device("auto") == distributed.resolve_device(" AUTO ") == torch.device("cpu")
    assert distributed.parse_gpu_ids("-1,-1") == [] and distributed.parse_gpu_ids("1, 0") == [1, 0]


@pytest.mark.parametrize("gpu_ids", ["gpu0", "0;1", "cuda:0"])
def test_gpu_ids_that_are_not_numbers_are_one_line_errors(gpu_ids: str) -> None:
    with pytest.raises(ValueError, match=f"^--gpu_ids {re.escape(repr(gpu_ids))}: expected auto, -1 or comma"):
        distributed.resolve_device(gpu_ids)


def test_a_gpu_without_cuda_is_refused_not_replaced_by_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="^--gpu_ids 0: CUDA is not available .* pass --gpu_ids -1 for the CPU$"):
        distributed.resolve_device("0")
