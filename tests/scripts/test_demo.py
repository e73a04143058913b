"""demo.py (the whole pipeline on a phantom cohort), its report and the phantom-truth comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest

import demo
from evaluation.phantom_truth import (
    accuracy_summary,
    compare_to_truth,
    restrict_to_common,
    subsets,
    threshold_confusion,
    truth_table,
)
from util.fileio import write_json
from util.report import demo_summary, write_report


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
    args = Namespace(quick=True, cases=5, seed=3, gan_epochs=9)
    config = demo.config_from_args(args)
    assert (config.cases, config.seed, config.gan_epochs, config.gan_epochs_decay) == (5, 3, 9, 3)
    assert config.vertebrae == demo.QUICK.vertebrae
    assert demo.FULL.generation_min_slice_voxels == 100  # 400 voxels at 1 mm -> 100 at 2 mm


def test_steps_cover_the_pipeline_in_order(tmp_path: Path, repo_root: Path) -> None:
    steps = demo.build_steps(demo.QUICK, demo.DemoPaths(tmp_path), "-1")
    assert [s.script for s in steps] == [
        "data/make_phantoms.py", "straighten/location_json_local.py", "straighten/straighten_mask_3d.py",
        "Attention/train_classifier.py", "Attention/grad_CAM_3d_sagittal.py", "train.py",
        "eval_3d_sagittal_twostage.py", "evaluation/RHLV_quantification.py", "evaluation/SVM_grading.py",
        "evaluation/SVM_grading.py", "evaluation/generation_eval_sagittal.py"]
    assert all((repo_root / s.script).is_file() for s in steps)
    assert all("--gpu_ids" in s.args for s in steps if s.script in ("train.py", "eval_3d_sagittal_twostage.py"))


def test_out_dir_with_an_earlier_run_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        demo.prepare_out_dir(tmp_path, overwrite=False)
    demo.prepare_out_dir(tmp_path, overwrite=True)
    assert not (tmp_path / "raw").exists()
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_step_without_its_inputs_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    produced = tmp_path / "x.txt"
    failing = demo.Step("boom", "-c", ["import sys; print('bad input'); sys.exit(3)"], "x.txt", (), (produced,))
    dependent = demo.Step("after", "-c", ["pass"], "nothing", (produced,), ())
    independent = demo.Step("other", "-c", ["pass"], "nothing", (), ())
    monkeypatch.setattr(demo, "build_steps", lambda config, paths, gpu_ids: [failing, dependent, independent])
    run = demo.run_pipeline(demo.QUICK, tmp_path, echo=False)
    assert [s.status for s in run.steps] == ["failed", "skipped", "ok"]
    assert "bad input" in Path(run.steps[0].log).read_text(encoding="utf-8")
    assert "x.txt is missing" in run.steps[1].log
    assert not run.ok


def test_report_is_written_when_artefacts_are_missing(truth_root: Path) -> None:
    run = demo.PipelineRun(demo.QUICK, demo.DemoPaths(truth_root), "-1",
                           [demo.StepResult("phantoms", "python data/make_phantoms.py", "raw/", 0, 1, 1, 1.0, 0.5)])
    summary = demo_summary(run)
    assert summary["cohort"]["vertebrae"] == 3 and summary["cohort"]["adjacent_fracture"] == 1
    page = write_report(run, summary).read_text(encoding="utf-8")
    assert "ph000" in page and "not available" in page and page.rstrip().endswith("</html>")


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "demo"
    completed = subprocess.run([sys.executable, "demo.py", "--quick", "--out", str(out), "--device", "cpu"],
                               cwd=repo_root, capture_output=True, encoding="utf-8", timeout=1800)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert "HealthiVert demo summary" in completed.stdout
    summary = json.loads((out / "demo_summary.json").read_text(encoding="utf-8"))
    assert [s["status"] for s in summary["steps"]] and all(s["status"] in ("ok", "partial") for s in summary["steps"])
    assert set(summary["accuracy"]) == {"HealthiVert-GAN", "neighbour baseline"}
    assert summary["accuracy"]["HealthiVert-GAN"]["all"]["n"] > 0
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 4
    for heading in ("Cohort", "Original vs pseudo-healthy", "RHLV against the true height loss", "Timings"):
        assert heading in page
    assert any((out / "results" / "healthivert" / "label_fake").glob("*.nii.gz"))
