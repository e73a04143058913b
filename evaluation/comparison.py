"""The paper's comparison table from grading outputs: Macro-P/R/F1 and accuracy, mean ± std over folds.

Every method is scored by the same protocol and scorer (``evaluation.grading``): a ``grading.json``
with one entry per fold (``folds[i]["macro_precision"]``, ...), each scored on the val split. The
table puts the paper's VerSe2019 figures beside ours, labelled as published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.grading import METRIC_KEYS
from util.fileio import atomic_path, read_json

METRIC_LABELS = {"macro_precision": "Macro-P", "macro_recall": "Macro-R", "macro_f1": "Macro-F1",
                 "accuracy": "Accuracy"}
# Methods of the paper's table, by the key used on the command line, in the paper's order.
METHOD_NAMES = {"healthivert": "HealthiVert-GAN", "aotgan": "AOT-GAN", "supcon_senet": "3D SupCon-SENet",
                "neighbours": "Neighbour rule"}
# The paper's VerSe2019 Macro-P/R/F1 (published figures, not produced by this code).
PUBLISHED_VERSE2019 = {"healthivert": (0.727, 0.753, 0.723), "aotgan": (0.710, 0.707, 0.692),
                       "supcon_senet": (0.710, 0.636, 0.667)}


@dataclass(frozen=True)
class RunScores:
    """Per-fold scores of one method: ``folds[metric]`` is a list with one value per fold."""

    key: str
    name: str
    source: Path
    folds: dict[str, list[float]]
    n_val: int
    val_class_counts: dict[str, int]

    def mean(self, metric: str) -> float:
        return float(np.mean(self.folds[metric]))

    def std(self, metric: str) -> float:
        """Population standard deviation over folds (the square root of ``grading.json``'s variance)."""
        return float(np.std(self.folds[metric]))


def parse_run_spec(spec: str) -> tuple[str, Path]:
    """``KEY=PATH`` -> (key, path); PATH is a grading.json file or the folder holding one."""
    key, sep, path = spec.partition("=")
    if not sep or not key or not path:
        raise ValueError(f"--runs {spec!r}: expected KEY=PATH (e.g. healthivert=results/healthivert/grading)")
    return key.strip(), Path(path)


def grading_file(path: Path) -> Path:
    """``path`` itself for a ``.json`` file, else ``path/grading.json`` (a grading output folder)."""
    return path if path.suffix == ".json" else path / "grading.json"


def read_run(key: str, path: Path) -> RunScores:
    """Scores of one method from its ``grading.json``; ``ValueError`` naming the file when unusable."""
    source = grading_file(path)
    if not source.is_file():
        raise ValueError(f"{source}: grading file not found")
    report: Any = read_json(source)
    folds = report.get("folds") if isinstance(report, dict) else None
    if not folds:
        raise ValueError(f"{source}: no 'folds' in the grading report")
    missing = [metric for metric in METRIC_KEYS if any(metric not in fold for fold in folds)]
    if missing:
        raise ValueError(f"{source}: folds lack {missing}")
    class_counts = {str(k): int(v) for k, v in report.get("val_class_counts", {}).items()}
    return RunScores(key, METHOD_NAMES.get(key, key), source,
                     {metric: [float(fold[metric]) for fold in folds] for metric in METRIC_KEYS},
                     int(report.get("n_val", 0)), class_counts)


def mean_std(value_mean: float, value_std: float) -> str:
    return f"{value_mean:.3f} ± {value_std:.3f}"


def comparison_table(runs: Sequence[RunScores]) -> pd.DataFrame:
    """One row per method: mean and std of every metric, folds, val size and the published P/R/F1."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"key": run.key, "method": run.name, "folds": len(run.folds[METRIC_KEYS[0]]),
                               "n_val": run.n_val}
        for metric in METRIC_KEYS:
            row[f"{metric}_mean"] = run.mean(metric)
            row[f"{metric}_std"] = run.std(metric)
        published = PUBLISHED_VERSE2019.get(run.key)
        for metric, value in zip(METRIC_KEYS[:3], published or (math.nan,) * 3):
            row[f"published_{metric}"] = value
        row["source"] = str(run.source)
        rows.append(row)
    return pd.DataFrame(rows)


def same_val_split(runs: Sequence[RunScores]) -> bool:
    """Whether every run was scored on val splits of the same size and grade counts."""
    return len({(run.n_val, tuple(sorted(run.val_class_counts.items()))) for run in runs}) <= 1


def comparison_markdown(table: pd.DataFrame, cohort: str = "", notes: Sequence[str] = ()) -> str:
    """The table in Markdown: ours as mean ± std over folds, the paper's VerSe2019 figures beside them."""
    header = ["Method", *(f"{METRIC_LABELS[m]} (ours)" for m in METRIC_KEYS), "Folds",
              *(f"{METRIC_LABELS[m]} (published, VerSe2019)" for m in METRIC_KEYS[:3])]
    lines = []
    if cohort:
        lines.append(f"Cohort: {cohort}. Ours: mean ± std over the grading folds, each fold scored on val.")
    lines.append("Published: the paper's VerSe2019 figures (not produced by this code); — where the paper has none.")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        ours = [mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in METRIC_KEYS]
        published = ["—" if pd.isna(row[f"published_{m}"]) else f"{row[f'published_{m}']:.3f}" for m in METRIC_KEYS[:3]]
        lines.append("| " + " | ".join([str(row["method"]), *ours, str(row["folds"]), *published]) + " |")
    lines += [f"\n{note}" for note in notes]
    return "\n".join(lines) + "\n"


def save_comparison_plot(runs: Sequence[RunScores], path: str | Path) -> Path:
    """Grouped bars (mean over folds) per metric and method, error bars ± std, fold values as dots;
    published VerSe2019 values as hollow diamonds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(runs), 1)
    positions = np.arange(len(METRIC_KEYS))
    for index, run in enumerate(runs):
        x = positions - 0.4 + width * (index + 0.5)
        means = [run.mean(m) for m in METRIC_KEYS]
        stds = [run.std(m) for m in METRIC_KEYS]
        bars = axes.bar(x, means, width * 0.9, yerr=stds, capsize=3, label=run.name)
        colour = bars.patches[0].get_facecolor()
        for xi, metric in zip(x, METRIC_KEYS):
            values = run.folds[metric]
            axes.scatter(np.full(len(values), xi), values, s=8, color="black", zorder=3)
        published = PUBLISHED_VERSE2019.get(run.key)
        if published:
            axes.scatter(x[:3], published, marker="D", s=30, facecolors="none", edgecolors=colour, linewidths=1.5,
                         zorder=4)
    axes.scatter([], [], marker="D", facecolors="none", edgecolors="grey", label="published (VerSe2019)")
    axes.set_xticks(positions, [METRIC_LABELS[m] for m in METRIC_KEYS])
    axes.set_ylim(0.0, 1.05)
    axes.set_ylabel("score (mean ± std over folds; dots: folds)")
    axes.legend(fontsize=8, loc="upper center", ncol=3, bbox_to_anchor=(0.5, -0.08))
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return path
