"""The prepared small demo run (``tests.pipeline.small_run``), written once for the report tests."""

from __future__ import annotations

import pytest

from pipeline.run import PipelineRun
from tests.pipeline.small_run import write_small_run


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """A finished run the tests only read (a test that changes files writes its own copy)."""
    return write_small_run(tmp_path_factory.mktemp("small_run"))
