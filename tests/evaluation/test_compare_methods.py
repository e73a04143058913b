"""evaluation/compare_methods.py on fixed grading reports: means, stds, published figures, bad runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation import compare_methods
from evaluation.comparison import PUBLISHED_VERSE2019, parse_run_spec, read_run
from tests.paths import REPO_ROOT
from util.fileio import write_json

FOLDS = {  # macro_precision, macro_recall, macro_f1, accuracy per fold
    "healthivert": [(0.8, 0.7, 0.6, 0.9), (0.6, 0.5, 0.4, 0.7)],
    "aotgan": [(0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5)],
    "neighbours": [(0.1, 0.2, 0.3, 0.4), (0.3, 0.4, 0.5, 0.6)],
}


def write_grading(folder: Path, folds: list[tuple[float, ...]], n_val: int = 10) -> Path:
    keys = ("macro_precision", "macro_recall", "macro_f1", "accuracy")
    fold_entries = [dict(zip(keys, values), fold=i + 1) for i, values in enumerate(folds)]
    write_json(folder / "grading.json", {"folds": fold_entries,
                                         "n_val": n_val, "val_class_counts": {"0": n_val - 2, "2": 2}})
    return folder


def test_table_has_fold_means_stds_and_published_figures(tmp_path: Path) -> None:
    specs = [f"{key}={write_grading(tmp_path / key, folds)}" for key, folds in FOLDS.items()]
    out = tmp_path / "table"
    assert compare_methods.main(["--out", str(out), "--runs", *specs, "--cohort", "fixed"]) == 0
    with open(out / "comparison.csv", newline="", encoding="utf-8") as handle:
        rows = {row["key"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["healthivert", "aotgan", "neighbours"]
    hv = rows["healthivert"]
    assert float(hv["macro_precision_mean"]) == pytest.approx(0.7)
    assert float(hv["macro_precision_std"]) == pytest.approx(0.1)  # population std of 0.8, 0.6
    assert float(hv["accuracy_mean"]) == pytest.approx(0.8)
    assert float(rows["aotgan"]["macro_f1_std"]) == 0.0 and rows["aotgan"]["folds"] == "3"
    assert float(hv["published_macro_f1"]) == pytest.approx(0.723)
    assert float(rows["aotgan"]["published_macro_recall"]) == pytest.approx(0.707)
    assert rows["neighbours"]["published_macro_f1"] == ""  # the paper has no neighbour rule row
    markdown = (out / "comparison.md").read_text(encoding="utf-8")
    assert ("| HealthiVert-GAN | 0.700 ± 0.100 | 0.600 ± 0.100 | 0.500 ± 0.100 | 0.800 ± 0.100 | 2 "
            "| 0.727 | 0.753 | 0.723 |") in markdown
    assert "| Neighbour rule | 0.200 ± 0.100 |" in markdown and "| — | — | — |" in markdown
    assert "published" in markdown.lower() and "not produced by this code" in markdown
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_published_figures_are_the_papers() -> None:
    assert PUBLISHED_VERSE2019 == {"healthivert": (0.727, 0.753, 0.723), "aotgan": (0.710, 0.707, 0.692),
                                   "supcon_senet": (0.710, 0.636, 0.667)}


def test_missing_run_is_named_and_exit_is_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_grading(tmp_path / "hv", FOLDS["healthivert"])
    out = tmp_path / "table"
    status = compare_methods.main(["--out", str(out), "--runs", f"healthivert={good}",
                                   f"supcon_senet={tmp_path / 'absent'}"])
    assert status == 1
    assert "absent/grading.json: grading file not found" in capsys.readouterr().err
    assert "Left out:" in (out / "comparison.md").read_text(encoding="utf-8")


def test_different_val_splits_are_flagged(tmp_path: Path) -> None:
    a = write_grading(tmp_path / "a", FOLDS["healthivert"], n_val=10)
    b = write_grading(tmp_path / "b", FOLDS["aotgan"], n_val=12)
    out = tmp_path / "table"
    assert compare_methods.main(["--out", str(out), "--runs", f"healthivert={a}", f"aotgan={b}"]) == 0
    assert "different val splits" in (out / "comparison.md").read_text(encoding="utf-8")


def test_bad_specs_and_reports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected KEY=PATH"):
        parse_run_spec("healthivert")
    write_json(tmp_path / "grading.json", {"folds": [{"macro_precision": 0.5}]})
    with pytest.raises(ValueError, match="folds lack"):
        read_run("x", tmp_path)


def test_demo_compare_adds_the_baselines_on_the_same_folds(tmp_path: Path, repo_root: Path) -> None:
    from dataclasses import replace

    import demo
    from pipeline.run import QUICK, DemoPaths
    from pipeline.steps import build_steps

    config = replace(QUICK, compare=True)
    steps = build_steps(config, DemoPaths(tmp_path), "-1")
    baseline = steps[len(build_steps(QUICK, DemoPaths(tmp_path), "-1")):]
    assert [s.script for s in baseline] == [
        "train.py", "eval_3d_sagittal_twostage.py", "evaluation/RHLV_quantification.py", "evaluation/SVM_grading.py",
        "Attention/train_grader3d.py", "evaluation/compare_methods.py"]
    assert all((repo_root / s.script).is_file() for s in baseline)
    args = {s.name: s.args for s in steps}
    assert args["AOT-GAN training"][args["AOT-GAN training"].index("--model") + 1] == "aotgan"
    for name in ("AOT-GAN training", "training"):  # the same training budget as HealthiVert-GAN
        assert args[name][args[name].index("--n_epochs") + 1] == str(config.gan_epochs)
    grader = args["3D SupCon-SENet"]
    svm = args["SVM grading"]
    assert grader[grader.index("--n_splits") + 1] == svm[svm.index("--n_splits") + 1]
    assert grader[grader.index("--grading_seed") + 1] == svm[svm.index("--seed") + 1]
    assert demo.config_from_args(demo.parse_args(["--quick", "--compare"])).compare


def test_report_shows_the_comparison_table(tmp_path: Path) -> None:
    from dataclasses import replace

    from pipeline.report_data import demo_summary
    from pipeline.run import QUICK, DemoPaths, PipelineRun
    from pipeline.run_report import write_report

    specs = [f"{key}={write_grading(tmp_path / key, folds)}" for key, folds in FOLDS.items()]
    paths = DemoPaths(tmp_path)
    assert compare_methods.main(["--out", str(paths.comparison), "--runs", *specs]) == 0
    run = PipelineRun(replace(QUICK, compare=True), paths, "-1")
    summary = demo_summary(run)
    assert summary["comparison"]["HealthiVert-GAN"]["macro_precision_mean"] == pytest.approx(0.7)
    page = write_report(run, summary).read_text(encoding="utf-8")
    assert "Method comparison (the paper&#x27;s table)" in page
    assert "0.700 ± 0.100" in page and "0.723" in page and "not results of this run" in page


def test_table_keeps_its_plus_minus_in_an_ascii_locale(tmp_path: Path) -> None:
    """The script in a fresh interpreter under the C locale without UTF-8 mode (Python's ASCII locale):
    the files hold the UTF-8 "±"/"—" and the printed copy escapes what the terminal cannot show."""
    specs = [f"{key}={write_grading(tmp_path / key, folds)}" for key, folds in FOLDS.items()]
    out = tmp_path / "table"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "evaluation" / "compare_methods.py"), "--out", str(out),
                           "--runs", *specs, "--cohort", "fixed"], cwd=REPO_ROOT, env=env, capture_output=True,
                          encoding="utf-8", check=False)
    assert done.returncode == 0, done.stderr
    markdown = (out / "comparison.md").read_bytes().decode("utf-8")
    assert "| HealthiVert-GAN | 0.700 ± 0.100 |" in markdown and "| — |" in markdown
    assert "0.700 \\xb1 0.100" in done.stdout and "\\u2014" in done.stdout
    with open(out / "comparison.csv", newline="", encoding="utf-8") as handle:
        assert [row["key"] for row in csv.DictReader(handle)] == list(FOLDS)
