"""Paths the tests use: the repository root and the optional ``../shared`` data beside it."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
REFERENCE_DIR = SHARED_DATA_DIR / "reference"
REAL_DATA_DIR = SHARED_DATA_DIR / "real"
