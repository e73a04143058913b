"""What the demo report shows, read from the artefacts the pipeline scripts wrote (phantom truth
files, split JSON, RHLV tables, grading and generation summaries): ``ReportData``, the run's numbers
as a JSON-ready summary (``demo_summary.json``) and its one-screen text, and the example vertebrae
the figures show. Nothing here recomputes a pipeline step."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from data.crops import read_split, split_of
from data.labels import spine_rank, vertebra_name
from evaluation.generation_metrics import IMAGE_METRICS, OVERLAP_METRICS
from evaluation.phantom_truth import GRADES, accuracy_summary, compare_to_truth, subsets, truth_table
from evaluation.rhlv_table import read_table
from pipeline.html import format_value as fmt
from pipeline.run import PipelineRun
from util.fileio import read_json

MORPHOLOGY_ORDER = ("none", "wedge", "biconcave", "crush")
GRADING_KEYS = ("macro_precision", "macro_recall", "macro_f1", "accuracy")
GENERATION_KEYS = (*IMAGE_METRICS, *OVERLAP_METRICS)


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except (ValueError, OSError):
        return None


def _read_table_or_none(path: Path) -> pd.DataFrame | None:
    try:
        return read_table(path) if path.is_file() else None
    except (ValueError, OSError):
        return None


@dataclass
class ReportData:
    """The artefacts of one run, loaded once (``None`` where a step did not produce them)."""

    truth: pd.DataFrame | None
    split: dict[str, dict[str, int]] | None
    comparisons: dict[str, pd.DataFrame]  # method -> RHLV table joined with the truth
    grading: dict[str, dict | None]  # method -> grading.json
    generation: dict | None  # generation_summary.json
    method_comparison: pd.DataFrame | None = None  # comparison.csv of evaluation/compare_methods.py (--compare)


def load_report_data(run: PipelineRun) -> ReportData:
    """Read truth, split, RHLV tables, grading and generation summaries of ``run``."""
    paths = run.paths
    try:
        truth = truth_table(paths.raw)
    except (FileNotFoundError, ValueError, OSError, KeyError):
        truth = None
    try:
        split = read_split(paths.split_json) if paths.split_json.is_file() else None
    except (ValueError, OSError):
        split = None
    comparisons = {}
    for method in paths.methods:
        table = _read_table_or_none(method.rhlv)
        if table is not None and truth is not None:
            comparisons[method.method] = compare_to_truth(table, truth)
    grading = {method.method: _read_json_or_none(method.grading / "grading.json") for method in paths.methods}
    method_comparison = _read_table_or_none(paths.comparison / "comparison.csv")
    return ReportData(truth, split, comparisons, grading, _read_json_or_none(paths.generation_summary),
                      method_comparison)


def demo_summary(run: PipelineRun, data: ReportData | None = None) -> dict[str, Any]:
    """The run's numbers as a JSON-ready dict: cohort, steps (status, seconds), accuracy against the
    phantom truth per method and subset, SVM grading means, generation-metric means."""
    data = data if data is not None else load_report_data(run)
    summary: dict[str, Any] = {"out": str(run.paths.root), "gpu_ids": run.gpu_ids, "ok": run.ok}
    if data.truth is not None:
        truth = data.truth
        summary["cohort"] = {"cases": int(truth["case"].nunique()), "vertebrae": int(len(truth)),
                             "fractured": int((truth["true_grade"] > 0).sum()),
                             "grades": {str(g): int((truth["true_grade"] == g).sum()) for g in GRADES},
                             "adjacent_fracture": int(truth["adjacent_fracture"].sum())}
    summary["steps"] = [{"name": s.name, "status": s.status, "wall_s": round(s.wall_s, 2), "cpu_s": round(s.cpu_s, 2),
                         "command": s.command, "log": s.log} for s in run.steps]
    summary["total_wall_s"] = round(run.total_wall_s, 2)
    summary["accuracy"] = {method: {name: accuracy_summary(rows) for name, rows in subsets(table).items()}
                           for method, table in data.comparisons.items()}
    summary["grading"] = {method: (report["mean"] if report else None) for method, report in data.grading.items()}
    summary["generation"] = data.generation["mean"] if data.generation else None
    summary["generation_n"] = data.generation["n_vertebrae"] if data.generation else 0
    if data.method_comparison is not None:
        summary["comparison"] = {row["method"]: {f"{key}_{stat}": float(row[f"{key}_{stat}"]) for key in GRADING_KEYS
                                                 for stat in ("mean", "std")}
                                 for _, row in data.method_comparison.iterrows()}
    return summary


def summary_text(run: PipelineRun, summary: dict[str, Any], report_path: Path | None) -> str:
    """The one-screen summary printed at the end of the demo."""
    lines = ["", "=" * 78, "HealthiVert demo summary", "=" * 78]
    cohort = summary.get("cohort")
    if cohort:
        lines.append(f"cohort: {cohort['cases']} phantom cases, {cohort['vertebrae']} vertebrae, "
                     f"{cohort['fractured']} fractured (grades 0-3: {', '.join(map(str, cohort['grades'].values()))}), "
                     f"{cohort['adjacent_fracture']} next to a fracture")
    lines.append("steps:")
    for step in summary["steps"]:
        lines.append(f"  {step['name']:<26} {step['status']:<8} {step['wall_s']:8.1f} s wall "
                     f"{step['cpu_s']:8.1f} s CPU")
    lines.append(f"  {'total':<26} {'':<8} {summary['total_wall_s']:8.1f} s wall")
    if summary["accuracy"]:
        lines.append("RHLV against the phantom truth (mean absolute error of the loss ratio; Genant grade of the")
        lines.append("largest regional RHLV by thresholds, macro-F1), all vertebrae / next to a fracture:")
        for method, by_subset in summary["accuracy"].items():
            every, adjacent = by_subset["all"], by_subset["adjacent fracture"]
            lines.append(f"  {method:<20} MAE ant/mid/post {fmt(every['mae_anterior'])}/{fmt(every['mae_middle'])}/"
                         f"{fmt(every['mae_posterior'])}  max {fmt(every['mae_max'])} "
                         f"(adjacent {fmt(adjacent['mae_max'])})  F1 {fmt(every['macro_f1_threshold'])} "
                         f"(adjacent {fmt(adjacent['macro_f1_threshold'])})  n={every['n']}")
    for method, mean in summary["grading"].items():
        if mean:
            lines.append(f"SVM grading ({method}, val, mean of folds): macro-P/R/F1 {fmt(mean['macro_precision'])}/"
                         f"{fmt(mean['macro_recall'])}/{fmt(mean['macro_f1'])}, accuracy {fmt(mean['accuracy'])}")
    if summary.get("comparison"):
        lines.append("comparison table (val, mean ± std over folds; evaluation/compare_methods.py): "
                     "macro-P/R/F1, accuracy")
        for method, scores in summary["comparison"].items():
            lines.append(f"  {method:<20} " + "  ".join(f"{fmt(scores[f'{key}_mean'])} ± {fmt(scores[f'{key}_std'])}"
                                                        for key in GRADING_KEYS))
    generation = summary.get("generation")
    if generation:
        lines.append(f"generation (healthy val vertebrae, n={summary['generation_n']}): "
                     + ", ".join(f"{key} {fmt(generation.get(key))}" for key in GENERATION_KEYS if key in generation))
    partial = [s["name"] for s in summary["steps"] if s["status"] == "partial"]
    failed = [s["name"] for s in summary["steps"] if s["status"] in ("failed", "skipped")]
    if partial:
        lines.append(f"partial (some items failed, listed in the logs in {run.paths.logs}): {', '.join(partial)}")
    if failed:
        lines.append(f"failed or skipped: {', '.join(failed)} (see the logs in {run.paths.logs})")
    if report_path is not None:
        lines.append(f"report: {report_path}")
    lines.append("=" * 78)
    return "\n".join(lines)


@dataclass(frozen=True)
class Example:
    """A vertebra shown in the report: key, true grade, morphology, split."""

    key: str
    grade: int
    morphology: str
    split: str

    @property
    def title(self) -> str:
        label = int(self.key.rsplit("_", 1)[1])
        return f"{self.key} ({vertebra_name(label)}), grade {self.grade}, {self.morphology}, {self.split}"


def pick_examples(truth: pd.DataFrame, split: dict[str, dict[str, int]] | None,
                  available: Iterable[str]) -> list[Example]:
    """One healthy vertebra and the most fractured vertebra of each morphology, preferring vertebrae
    not trained on (val, test), with both neighbours in the scan (not the first or last vertebra of
    the case) and, for the healthy one, without a fractured neighbour."""
    available = set(available)
    rows = truth[truth["Vertebra"].isin(available)].copy()
    rows["split"] = [(split_of(split, key) or ("?", 0))[0] if split else "?" for key in rows["Vertebra"]]
    rows["unseen"] = rows["split"].isin(["val", "test"])
    ranks = rows["label"].map(spine_rank)
    by_case = ranks.groupby(rows["case"])
    rows["interior"] = (ranks > by_case.transform("min")) & (ranks < by_case.transform("max"))
    examples = []
    for morphology in MORPHOLOGY_ORDER:
        if morphology == "none":
            pool = rows[(rows["true_grade"] == 0) & (rows["morphology"] == "none")]
            pool = pool.sort_values(["unseen", "interior", "adjacent_fracture"], ascending=[False, False, True])
        else:
            pool = rows[(rows["morphology"] == morphology) & (rows["true_grade"] > 0)]
            pool = pool.sort_values(["unseen", "interior", "true_grade"], ascending=[False, False, False])
        if len(pool):
            row = pool.iloc[0]
            examples.append(Example(row["Vertebra"], int(row["true_grade"]), row["morphology"], row["split"]))
    return examples
