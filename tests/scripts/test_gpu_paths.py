"""GPU-only behaviour: CUDA OOM in Grad-CAM (emulated on CPU) and, when CUDA exists, checkpoints and AMP on GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import train
from Attention import cam
from tests.synthetic_crops import write_synthetic_cohort

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = ["--num_threads", "0", "--ngf", "2", "--ndf", "4", "--mask_height", "16", "--hu_window", "-1000", "3000",
        "--no_progress", "--print_freq", "1", "--display_freq", "100", "--seed", "3", "--batch_size", "2",
        "--max_dataset_size", "3", "--n_epochs", "1", "--n_epochs_decay", "1", "--no_html", "--no_tensorboard"]


def test_grad_cam_reports_cuda_oom_per_vertebra_and_goes_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def map_one(_model, _opt, key, _out, _slice_input) -> tuple[float, None]:
        if key == "big_20":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 0.25, None

    for key in ("big_20", "small_21"):  # listed crops must exist; _map_one (patched) never reads them
        for folder in ("CT", "label"):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / f"{key}.nii.gz").touch()
    monkeypatch.setattr(cam, "load_classifier", lambda path, device: (None, {"window_hu": [-300, 800]}))
    monkeypatch.setattr(cam, "_map_one", map_one)
    opt = argparse.Namespace(seed=0, gpu_ids="-1", checkpoints_dir=str(tmp_path), name="cls", out=tmp_path / "maps",
                             dataroot=str(tmp_path), keys=["big_20", "small_21"], overwrite=False, batch_size=16,
                             truth_dir=None, slack=2, windows="auto")
    summary = cam.generate_maps(opt)
    assert summary["written"] == ["small_21"]
    assert summary["failed"]["big_20"] == ("out of GPU memory on cpu with --batch_size 16: pass a smaller "
                                           "--batch_size, or --gpu_ids -1 for the CPU")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_synthetic_cohort(tmp_path_factory.mktemp("gpu_cohort"))


def run_train(cohort: tuple[Path, Path], checkpoints: Path, name: str, *extra: str) -> int:
    dataroot, split = cohort
    return train.main(["--dataroot", str(dataroot), "--split_json", str(split), "--name", name,
                       "--checkpoints_dir", str(checkpoints), "--gpu_ids", "0", *TINY, *extra])


def tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in tensors(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in tensors(value)]
    return []


@needs_cuda
@pytest.mark.parametrize("amp", [[], ["--amp", "--amp_dtype", "fp16"], ["--amp", "--amp_dtype", "bf16"]])
def test_gpu_checkpoint_holds_cpu_tensors_and_resumes(cohort: tuple[Path, Path], tmp_path: Path,
                                                      amp: list[str]) -> None:
    if "bf16" in amp and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bfloat16")
    assert run_train(cohort, tmp_path, "gpu", "--max_steps", "1", *amp) == 0
    raw = torch.load(tmp_path / "gpu" / "latest.pth", weights_only=True)  # no map_location: saved devices
    assert all(t.device.type == "cpu" for t in tensors(raw))
    assert "cuda" in raw["rng"][0] and set(raw["model"]["scalers"]) == {"G", "D_1", "D_2", "D_3"}
    if "fp16" in amp:
        assert raw["model"]["scalers"]["G"]["scale"] > 0
    assert run_train(cohort, tmp_path, "gpu", "--continue_train", *amp) == 0
    assert torch.load(tmp_path / "gpu" / "latest.pth", weights_only=True)["progress"]["total_iters"] == 4
