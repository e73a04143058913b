"""Equivalence of the evaluation steps under ``--protocol reference`` with a fixture set.

The fixture set is the published code's output in the format of
``../shared/data/reference`` (its README): ``rhlv/`` (label pairs, ``dataset_info.json``,
``rhlv_threshold_<t>.csv``, ``rhlv.json``) and ``svm/`` (``rhlv_table.csv``, ``svm.json``).
Everything compared is read from the files: the thresholds from the CSV names, the
rows and columns from the tables, the number of folds from ``svm.json``.

Each check returns rows ``{"item", "difference", "tolerance", "passed"}``:
RHLV numbers to 1e-9, RHLV names/grades/splits and all SVM values exact.

    python benchmarks/reference_equivalence_evaluation.py --fixtures DIR
"""

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.equivalence_table import report
from data.image_io import load_mask
from data.labels import parse_key
from data.synthesis_layout import OutputLayout
from evaluation import RHLV_quantification, SVM_grading
from evaluation.rhlv import plane_heights, target_heights
from evaluation.rhlv_reference import published_slab

RHLV_TOLERANCE = 1e-9
THRESHOLD_FILE = re.compile(r"rhlv_threshold_(\d+(?:\.\d+)?)\.csv$")
STRING_COLUMNS = ("Vertebra", "Dataset")
EXACT_NUMBER_COLUMNS = ("Label",)
SVM_METRICS = ("macro_f1", "macro_precision", "macro_recall", "accuracy")
LENGTH_DIVISOR = 5  # the value the published main() passes (rhlv.json: "primary")


def _row(item: str, difference: float | str, tolerance: str, passed: bool) -> dict:
    return {"item": item, "difference": difference, "tolerance": tolerance, "passed": bool(passed)}


def _missing(item: str, path: Path) -> dict:
    return _row(item, f"{path} not found", "present", False)


def _run_quietly(main, argv: list[str]) -> tuple[int, str]:
    """Run a step script's ``main`` in-process; returns its status and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""


def _exact_mismatches(ours: pd.Series, theirs: pd.Series) -> int:
    return int(sum(str(a) != str(b) for a, b in zip(ours.tolist(), theirs.tolist())))


def compare_rhlv_table(ours: pd.DataFrame, theirs: pd.DataFrame, what: str) -> list[dict]:
    """Rows for one RHLV table: row keys and strings/grades exact, every other column to 1e-9."""
    rows = []
    if len(ours) != len(theirs):
        return [_row(f"{what}: rows", f"{len(ours)} rows vs {len(theirs)}", "exact", False)]
    missing = [column for column in theirs.columns if column not in ours.columns]
    if missing:
        rows.append(_row(f"{what}: columns", f"missing {missing}", "exact", False))
    exact = [c for c in theirs.columns if c in ours.columns and (c in STRING_COLUMNS or c in EXACT_NUMBER_COLUMNS
                                                                  or not pd.api.types.is_numeric_dtype(theirs[c]))]
    for column in exact:
        if column in EXACT_NUMBER_COLUMNS:
            mismatches = int((ours[column].to_numpy(np.float64) != theirs[column].to_numpy(np.float64)).sum())
        else:
            mismatches = _exact_mismatches(ours[column], theirs[column])
        rows.append(_row(f"{what}: {column}", "agree" if not mismatches else f"{mismatches} differ", "exact",
                         mismatches == 0))
    numbers = [c for c in theirs.columns if c in ours.columns and c not in exact]
    if numbers:
        a, b = ours[numbers].to_numpy(np.float64), theirs[numbers].to_numpy(np.float64)
        same_nan = np.isnan(a) == np.isnan(b)
        difference = float(np.nanmax(np.abs(a - b), initial=0.0)) if same_nan.all() else float("inf")
        rows.append(_row(f"{what}: {len(numbers)} number columns x {len(theirs)} rows", difference,
                         f"{RHLV_TOLERANCE:g}", difference <= RHLV_TOLERANCE))
    return rows


def _slab_rows(folder: Path, slabs: list[dict], what: str) -> list[dict]:
    """Our half-open slice ranges against the recorded ``[centre - n, centre + n)``."""
    mismatches = []
    for entry in slabs:
        key = entry["vertebra"]
        label = parse_key(key)[1]
        heights = target_heights(load_mask(folder / "label" / f"{key}.nii.gz").array, label, 0.0)
        if heights is None or list(published_slab(plane_heights(heights.counts, "sagittal"),
                                                  LENGTH_DIVISOR)) != list(entry["slices"]):
            mismatches.append(key)
    return [_row(f"{what}: slice ranges ({len(slabs)})", "agree" if not mismatches else f"differ: {mismatches}",
                 "exact", not mismatches)]


def check_rhlv(fixtures: Path) -> list[dict]:
    """Our RHLV table (``--protocol reference``) against every ``rhlv/rhlv_threshold_<t>.csv``."""
    folder = Path(fixtures) / "rhlv"
    info = folder / "dataset_info.json"
    fake_labels = OutputLayout(folder).label_dir
    for path in (folder / "label", fake_labels, info):
        if not path.exists():
            return [_missing("RHLV", path)]
    tables = sorted((float(m.group(1)), p) for p in folder.glob("rhlv_threshold_*.csv")
                    if (m := THRESHOLD_FILE.search(p.name)))
    if not tables:
        return [_missing("RHLV", folder / "rhlv_threshold_<t>.csv")]
    recorded = json.loads((folder / "rhlv.json").read_text(encoding="utf-8")).get("results", {}) \
        if (folder / "rhlv.json").is_file() else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threshold, reference_csv in tables:
            what = f"RHLV threshold {threshold:g}"
            out = Path(tmp) / f"rhlv_{threshold:g}.csv"
            status, message = _run_quietly(RHLV_quantification.main, [
                "--protocol", "reference", "--label_dir", str(folder / "label"),
                "--fake_dir", str(fake_labels), "--split_json", str(info), "--out", str(out),
                "--height_threshold", repr(threshold), "--length_divisor", str(LENGTH_DIVISOR), "--workers", "1"])
            if status != 0 or not out.is_file():
                rows.append(_row(what, f"RHLV_quantification.py failed: {message}", "runs", False))
                continue
            rows.extend(compare_rhlv_table(pd.read_csv(out), pd.read_csv(reference_csv), what))
            slabs = next((v.get("slabs") for k, v in recorded.items() if float(k) == threshold), None)
            if slabs:
                rows.extend(_slab_rows(folder, slabs, what))
    return rows


def _confusion_in_reference_labels(matrix: list[list[int]], classes: list[int], labels: list[int]) -> list:
    """Our confusion matrix (``classes`` order) restricted to the grades sklearn's default would list."""
    index = [classes.index(grade) for grade in labels]
    return np.asarray(matrix)[np.ix_(index, index)].tolist()


def compare_svm(report: dict, reference: dict) -> list[dict]:
    """Rows comparing a ``grading.json`` report with ``svm.json``: every value exact."""
    rows = []
    folds, theirs = report["folds"], reference["folds"]
    if len(folds) != len(theirs):
        return [_row("SVM folds", f"{len(folds)} folds vs {len(theirs)}", "exact", False)]
    val_labels = report["val_labels"]
    if "val_labels" in reference:
        agree = val_labels == reference["val_labels"]
        rows.append(_row("SVM val labels", "agree" if agree else "differ", "exact", agree))
    for ours, fold in zip(folds, theirs):
        what = f"SVM fold {ours['fold']}"
        difference = max(abs(ours[key] - fold[key]) for key in SVM_METRICS if key in fold)
        rows.append(_row(f"{what}: {', '.join(k for k in SVM_METRICS if k in fold)}", float(difference), "exact",
                         difference == 0))
        labels = sorted(set(val_labels) | set(ours["val_predictions"]))
        checks = [("confusion matrix", "confusion_matrix",
                   _confusion_in_reference_labels(ours["confusion_matrix"], report["classes"], labels)),
                  ("val predictions", "val_predictions", ours["val_predictions"]),
                  ("training rows", "train_positions_in_pool", ours["train_positions"])]
        for name, key, value in checks:
            if key in fold:
                agree = value == fold[key]
                rows.append(_row(f"{what}: {name}", "agree" if agree else "differ", "exact", agree))
    for summary in ("mean", "variance"):
        if summary in reference:
            difference = max(abs(report[summary][key] - reference[summary][key]) for key in reference[summary])
            rows.append(_row(f"SVM {summary} over folds", float(difference), "exact", difference == 0))
    return rows


def check_svm(fixtures: Path) -> list[dict]:
    """Our grading (``--protocol reference``) of ``svm/rhlv_table.csv`` against ``svm/svm.json``."""
    folder = Path(fixtures) / "svm"
    table, expected = folder / "rhlv_table.csv", folder / "svm.json"
    for path in (table, expected):
        if not path.is_file():
            return [_missing("SVM", path)]
    reference = json.loads(expected.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        status, message = _run_quietly(SVM_grading.main, [
            "--protocol", "reference", "--rhlv", str(table), "--out", tmp, "--n_splits", str(len(reference["folds"]))])
        if status != 0:
            return [_row("SVM", f"SVM_grading.py failed: {message}", "runs", False)]
        report = json.loads((Path(tmp) / "grading.json").read_text(encoding="utf-8"))
    return compare_svm(report, reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", required=True, help="fixture folder with rhlv/ and svm/")
    args = parser.parse_args(argv)
    rows = check_rhlv(Path(args.fixtures)) + check_svm(Path(args.fixtures))
    return report(rows)


if __name__ == "__main__":
    sys.exit(main())
