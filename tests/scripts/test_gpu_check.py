"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check, tiny, on the CPU (2 Gloo ranks for torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_trains_resumes_and_synthesizes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--skip_tests",
                             "--out", str(tmp_path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=1800, check=False, encoding="utf-8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[-14:] if len(line.split()) > 2}
    for name in ("cohort", "classifier", "gradcam", "train", "amp_bf16", "ddp", "ddp_wgangp", "synthesis",
                 "synthesis_ddp"):
        assert table.get(name) == "ok", result.stdout[-3000:]
    assert table["amp_fp16"] == "skipped" and table["gpu1"] == "skipped"
    assert "s/step, resume ok" in result.stdout and "s/vertebra" in result.stdout
    # the 2-rank resume continued the 2-rank checkpoint: 3 + 1 steps
    assert "iteration 3" in (tmp_path / "logs" / "ddp_resume.log").read_text(encoding="utf-8")
