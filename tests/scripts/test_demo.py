"""demo.py (the whole pipeline on a phantom cohort): its flags, step orchestration, the phantom-truth
comparison, and the one end-to-end quick run (the report itself: tests/pipeline/test_run_report.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

import demo
import pipeline.runner
from evaluation.phantom_truth import (
    accuracy_summary,
    compare_to_truth,
    restrict_to_common,
    subsets,
    threshold_confusion,
    truth_table,
)
from pipeline.run import FULL, QUICK, DemoPaths, Step
from pipeline.steps import build_steps
from tests.pipeline.test_run_report import parse
from util.fileio import write_json


def _truth_file(root: Path, case: str, vertebrae: list[dict]) -> None:
    """A minimal phantom truth file (the keys truth_table reads)."""
    write_json(root / "raw" / case / f"{case}_truth.json",
               {"case": case, "orientation": "RAS", "spacing_mm": [1.0, 1.0, 1.0], "vertebrae": vertebrae})


def _vertebra(label: int, grade: int, morphology: str, losses: tuple[float, float, float], adjacent: bool) -> dict:
    regions = dict(zip(("anterior", "middle", "posterior"), losses))
    return {"label": label, "name": f"V{label}", "grade": grade, "morphology": morphology,
            "loss_ratio": max(losses), "loss_by_region": regions, "adjacent_fracture": adjacent, "truncated": False}


@pytest.fixture()
def truth_root(tmp_path: Path) -> Path:
    _truth_file(tmp_path, "ph000", [
        _vertebra(19, 0, "none", (0.0, 0.0, 0.0), False),
        _vertebra(20, 3, "wedge", (0.45, 0.2, 0.0), False),
        _vertebra(21, 2, "crush", (0.3, 0.3, 0.3), True),
    ])
    return tmp_path


def test_compare_to_truth_errors_and_threshold_grades(truth_root: Path) -> None:
    rhlv = pd.DataFrame({"Vertebra": ["ph000_19", "ph000_20", "ph000_21", "ph999_20"],
                         "Pre RHLV": [0.05, 0.40, 0.30, 0.9], "Mid RHLV": [-0.02, 0.25, 0.10, 0.9],
                         "Post RHLV": [0.01, 0.0, 0.22, 0.9]})
    comparison = compare_to_truth(rhlv, truth_table(truth_root / "raw"))
    assert list(comparison["Vertebra"]) == ["ph000_19", "ph000_20", "ph000_21"]  # no truth -> not compared
    assert list(comparison["rhlv_grade"]) == [0, 2, 2]  # max regional RHLV 0.05, 0.40 (<= 0.40: grade 2), 0.30
    summary = accuracy_summary(comparison)
    assert summary["mae_anterior"] == pytest.approx((0.05 + 0.05 + 0.0) / 3)
    assert summary["mae_middle"] == pytest.approx((0.02 + 0.05 + 0.2) / 3)
    assert summary["mae_max"] == pytest.approx((0.05 + 0.05 + 0.0) / 3)
    assert summary["accuracy_threshold"] == pytest.approx(2 / 3)
    assert summary["macro_f1_threshold"] == pytest.approx((1.0 + 0.0 + 2 / 3) / 3)  # grades 0, 3 (missed), 2
    assert threshold_confusion(comparison)[3][2] == 1
    parts = subsets(comparison)
    assert list(parts["adjacent fracture"]["Vertebra"]) == ["ph000_21"]
    assert len(parts["fractured (grade > 0)"]) == 2
    common = restrict_to_common({"a": comparison, "b": comparison[comparison["Vertebra"] != "ph000_20"]})
    assert [list(t["Vertebra"]) for t in common.values()] == [["ph000_19", "ph000_21"]] * 2


def test_truth_table_requires_truth_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="truth"):
        truth_table(tmp_path / "raw")


def test_config_overrides_and_quick_preset() -> None:
    args = Namespace(quick=True, cases=5, seed=3, gan_epochs=9, compare=False)
    config = demo.config_from_args(args)
    assert (config.cases, config.seed, config.gan_epochs, config.gan_epochs_decay) == (5, 3, 9, 3)
    assert config.vertebrae == QUICK.vertebrae
    assert FULL.generation_min_slice_voxels == 100  # 400 voxels at 1 mm -> 100 at 2 mm


def test_step_without_its_inputs_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    produced = tmp_path / "x.txt"
    failing = Step("boom", "-c", ["import sys; print('bad input'); sys.exit(3)"], "x.txt", (), (produced,))
    dependent = Step("after", "-c", ["pass"], "nothing", (produced,), ())
    independent = Step("other", "-c", ["pass"], "nothing", (), ())
    monkeypatch.setattr(pipeline.runner, "build_steps",
                        lambda config, paths, gpu_ids: [failing, dependent, independent])
    run = demo.run_pipeline(QUICK, tmp_path, echo=False)
    assert [s.status for s in run.steps] == ["failed", "skipped", "ok"]
    assert "bad input" in Path(run.steps[0].log).read_text(encoding="utf-8")
    assert "x.txt is missing" in run.steps[1].log
    assert not run.ok


def test_quick_demo_runs_end_to_end(tmp_path: Path, repo_root: Path) -> None:
    """The one end-to-end run: every step script through ``python demo.py --quick``; the summary and the
    report hold the numbers of the run's own RHLV tables against its phantom truth."""
    out = tmp_path / "demo"
    completed = subprocess.run([sys.executable, "demo.py", "--quick", "--out", str(out), "--device", "cpu"],
                               cwd=repo_root, capture_output=True, text=True, encoding="utf-8", timeout=1800)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert "HealthiVert demo summary" in completed.stdout
    paths = DemoPaths(out.resolve())
    summary = json.loads(paths.summary_json.read_text(encoding="utf-8"))
    assert [s["name"] for s in summary["steps"]] == [s.name for s in build_steps(QUICK, paths, "-1")]
    assert all(s["status"] in ("ok", "partial") and Path(s["log"]).is_file() for s in summary["steps"])
    assert summary["config"] == json.loads(json.dumps(asdict(QUICK)))
    truth = truth_table(paths.raw)
    assert summary["cohort"]["cases"] == QUICK.cases == truth["case"].nunique()
    for method in paths.methods:  # the summary's accuracy is that of the run's own CSV against its truth
        expected = accuracy_summary(compare_to_truth(pd.read_csv(method.rhlv), truth))
        measured = summary["accuracy"][method.method]["all"]
        assert measured["n"] == expected["n"] > 0
        assert measured["mae_anterior"] == pytest.approx(expected["mae_anterior"])
    crops = {p.name for p in (paths.dataroot / "label").glob("*.nii.gz")}
    synthesized = {p.name for p in (paths.results / "label_fake").glob("*.nii.gz")}
    assert synthesized and synthesized <= crops
    page = parse(paths.report)
    for title in ("Straightened crops and attention maps", "Original vs pseudo-healthy",
                  "RHLV against the true height loss", "Training losses"):
        assert page.sections[title]["missing"] == 0 and len(page.sections[title]["images"]) == 1, title
    accuracy = {tuple(row[:2]): row for row in page.sections["RHLV against the true height loss"]["tables"][0][1:]}
    every = summary["accuracy"]["HealthiVert-GAN"]["all"]
    assert int(accuracy[("HealthiVert-GAN", "all")][2]) == every["n"]
    assert float(accuracy[("HealthiVert-GAN", "all")][3]) == pytest.approx(every["mae_anterior"], abs=5e-4)
    assert [row[0] for row in page.sections["Timings"]["tables"][0][1:-1]] == [s["name"] for s in summary["steps"]]
