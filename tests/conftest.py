"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.paths import REAL_DATA_DIR, REPO_ROOT
from tests.phantom_fixtures import phantom_cohort_dir  # noqa: F401  (session-scoped phantom cohort)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (scripts are run from here)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``../shared/data/real`` beside the repository; tests using it skip when it is absent."""
    if not REAL_DATA_DIR.is_dir():
        pytest.skip(f"real spine CT data not available at {REAL_DATA_DIR}")
    return REAL_DATA_DIR


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Tests use tiny tensors: one intra-op thread is as fast, and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
