"""util/device.py: one seed fixes Python, NumPy and PyTorch draws; ``deterministic`` asks for repeatable kernels."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from util.device import seed_everything


def draws() -> tuple[float, list[float], list[float]]:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_the_same_seed_gives_the_same_draws_and_another_seed_others() -> None:
    seed_everything(123)
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert all(a != b for a, b in zip(draws(), first))


def test_seeds_beyond_numpys_range_are_folded_into_it() -> None:
    seed_everything(2**32 + 5)
    wide = np.random.rand(2).tolist()
    np.random.seed(5)
    assert wide == np.random.rand(2).tolist()


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def test_deterministic_switches_torch_to_repeatable_kernels(monkeypatch, restore_determinism) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)  # an earlier test of the session may have switched it on
    seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()  # seeding alone leaves the kernels as they are
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
