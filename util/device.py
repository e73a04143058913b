"""Device selection and seeding, pix2pix style (``--gpu_ids -1`` means CPU)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def parse_gpu_ids(gpu_ids: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """Parse ``"0,1"`` / ``"-1"`` / ``[0]`` into a list of non-negative GPU ids (empty = CPU)."""
    if isinstance(gpu_ids, int):
        gpu_ids = [gpu_ids]
    if isinstance(gpu_ids, str):
        gpu_ids = [int(tok) for tok in gpu_ids.split(",") if tok.strip()]
    return [int(i) for i in gpu_ids if int(i) >= 0]


def resolve_device(gpu_ids: str | int | list[int] | tuple[int, ...] = "-1") -> torch.device:
    """The device to run on: the first requested GPU when CUDA is available, else the CPU.

    Under ``torchrun`` the local rank picks the GPU from the requested list.
    """
    ids = parse_gpu_ids(gpu_ids)
    if not ids or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", ids[local_rank % len(ids)])


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch; ``deterministic`` also asks for bitwise-repeatable kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
