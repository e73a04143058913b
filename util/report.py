"""Summary numbers and the self-contained HTML report of a demo run (``demo.py``).

Everything here reads the artefacts the pipeline scripts wrote (phantom truth files, straightened
crops, attention maps, synthesized crops, RHLV tables, grading and generation summaries, the
training loss log) and never recomputes a pipeline step. Images are PNGs embedded as base64
``data:`` URIs, so ``<out>/report/index.html`` can be copied or mailed on its own.

Image axes follow the crop contract (DESIGN 3.3): a sagittal slice ``crop[:, :, z]`` is shown with
row 0 (superior) at the top and anterior on the left.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from Attention.localisation import localise
from data.crops import load_crop, read_split, split_of
from data.image_io import ImageIOError, load_ct, load_mask
from data.labels import spine_rank, vertebra_name
from data.phantoms import REGIONS
from evaluation.genant import GENANT_THRESHOLDS
from evaluation.generation_metrics import IMAGE_METRICS, OVERLAP_METRICS
from evaluation.phantom_truth import (
    GRADES,
    RHLV_COLUMN_OF_REGION,
    accuracy_summary,
    compare_to_truth,
    restrict_to_common,
    subsets,
    threshold_confusion,
    truth_table,
)
from evaluation.rhlv_table import read_table
from util.fileio import atomic_write, read_json

if TYPE_CHECKING:  # demo.py is the entry point that owns the run description
    from demo import PipelineRun

CT_DISPLAY_WINDOW_HU = (-300.0, 1200.0)
# method -> (DemoPaths attribute of its RHLV table, of its grading folder)
METHODS = {"HealthiVert-GAN": ("rhlv", "grading"), "neighbour baseline": ("rhlv_neighbours", "grading_neighbours")}
MORPHOLOGY_ORDER = ("none", "wedge", "biconcave", "crush")
GRADING_KEYS = ("macro_precision", "macro_recall", "macro_f1", "accuracy")
GENERATION_KEYS = (*IMAGE_METRICS, *OVERLAP_METRICS)
ATTENTION_ON_TARGET = 0.5  # an attention map "misses" the target when less of its mass lies on the body


# --------------------------------------------------------------------------- loading helpers


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
    for method, (rhlv_attribute, _) in METHODS.items():
        table = _read_table_or_none(getattr(paths, rhlv_attribute))
        if table is not None and truth is not None:
            comparisons[method] = compare_to_truth(table, truth)
    grading = {method: _read_json_or_none(getattr(paths, folder) / "grading.json")
               for method, (_, folder) in METHODS.items()}
    method_comparison = _read_table_or_none(paths.comparison / "comparison.csv")
    return ReportData(truth, split, comparisons, grading, _read_json_or_none(paths.generation_summary),
                      method_comparison)


# --------------------------------------------------------------------------- summary


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


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


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
            lines.append(f"  {method:<20} MAE ant/mid/post {_fmt(every['mae_anterior'])}/{_fmt(every['mae_middle'])}/"
                         f"{_fmt(every['mae_posterior'])}  max {_fmt(every['mae_max'])} "
                         f"(adjacent {_fmt(adjacent['mae_max'])})  F1 {_fmt(every['macro_f1_threshold'])} "
                         f"(adjacent {_fmt(adjacent['macro_f1_threshold'])})  n={every['n']}")
    for method, mean in summary["grading"].items():
        if mean:
            lines.append(f"SVM grading ({method}, val, mean of folds): macro-P/R/F1 {_fmt(mean['macro_precision'])}/"
                         f"{_fmt(mean['macro_recall'])}/{_fmt(mean['macro_f1'])}, accuracy {_fmt(mean['accuracy'])}")
    if summary.get("comparison"):
        lines.append("comparison table (val, mean ± std over folds; evaluation/compare_methods.py): "
                     "macro-P/R/F1, accuracy")
        for method, scores in summary["comparison"].items():
            lines.append(f"  {method:<20} " + "  ".join(f"{_fmt(scores[f'{key}_mean'])} ± {_fmt(scores[f'{key}_std'])}"
                                                        for key in GRADING_KEYS))
    generation = summary.get("generation")
    if generation:
        lines.append(f"generation (healthy val vertebrae, n={summary['generation_n']}): "
                     + ", ".join(f"{key} {_fmt(generation.get(key))}" for key in GENERATION_KEYS if key in generation))
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


# --------------------------------------------------------------------------- figures


def figure_data_uri(figure: Figure, dpi: int = 80) -> str:
    """PNG of a matplotlib figure as a ``data:`` URI."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_uri(path: Path) -> str | None:
    """A PNG file as a ``data:`` URI (None when missing)."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _label_colormap() -> ListedColormap:
    colours = colormaps["tab10"](np.arange(10))
    colours[0] = (0.0, 0.0, 0.0, 1.0)
    return ListedColormap(colours)


def _label_display(label_slice: np.ndarray) -> np.ndarray:
    """VerSe ids mapped to 1..9 colour indices (0 = background) so neighbouring bodies differ."""
    return np.where(label_slice > 0, (label_slice.astype(int) - 1) % 9 + 1, 0)


def _show(axis: Any, image: np.ndarray, spacing_mm: Sequence[float], title: str, **kwargs: Any) -> None:
    """A sagittal slice (rows S->I, columns A->P) with its physical aspect ratio."""
    axis.imshow(image, aspect=spacing_mm[0] / spacing_mm[1], interpolation="nearest", **kwargs)
    axis.set_title(title, fontsize=8)
    axis.set_xticks([])
    axis.set_yticks([])


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


def attention_on_target(cam_slice: np.ndarray, target: np.ndarray) -> float | None:
    """Fraction of an attention slice's mass on the target body, 2 pixels of slack
    (``Attention.localisation.localise``; ``None`` for an all-zero map)."""
    return localise(cam_slice, target).mass_share


def attention_title(cam_slice: np.ndarray, target: np.ndarray) -> str:
    """Panel title: the map's maximum, how much of it lies on the target body and whether its peak does
    (``Attention.localisation.localise``), flagged when less than half of it or its peak misses the body."""
    measure = localise(cam_slice, target)
    if measure.mass_share is None:
        return "attention: none (all zero)"
    misses = measure.mass_share < ATTENTION_ON_TARGET or not measure.peak_in_target
    flag = "  MISSES TARGET" if misses else ""
    peak = "peak on target" if measure.peak_in_target else "peak off target"
    return f"attention max {float(np.max(cam_slice)):.2f}, {peak}\n{100 * measure.mass_share:.0f}% on target{flag}"


def attention_figure(dataroot: Path, heatmap_dir: Path, examples: Sequence[Example]) -> Figure | None:
    """Mid-sagittal slice of each example's straightened CT crop, with its attention map overlaid
    (titled with the share of the map on the target body)."""
    panels = []
    for example in examples:
        try:
            crop = load_crop(dataroot, example.key)
        except (ImageIOError, OSError, ValueError):
            continue
        cam_path = heatmap_dir / f"{example.key}.nii.gz"
        cam = load_ct(cam_path).array if cam_path.is_file() else np.zeros_like(crop.ct_hu)
        panels.append((example, crop, cam))
    if not panels:
        return None
    figure = Figure(figsize=(2.6 * len(panels), 5.4))
    for column, (example, crop, cam) in enumerate(panels):
        z = crop.ct_hu.shape[2] // 2
        spacing = crop.spacing_mm
        ct_axis = figure.add_subplot(2, len(panels), column + 1)
        _show(ct_axis, crop.ct_hu[:, :, z], spacing, example.title.replace(", ", "\n", 1), cmap="gray",
              vmin=CT_DISPLAY_WINDOW_HU[0], vmax=CT_DISPLAY_WINDOW_HU[1])
        ct_axis.contour(crop.label_map[:, :, z] == crop.label, levels=[0.5], colors="yellow", linewidths=0.8)
        cam_axis = figure.add_subplot(2, len(panels), len(panels) + column + 1)
        _show(cam_axis, crop.ct_hu[:, :, z], spacing,
              attention_title(cam[:, :, z], crop.label_map[:, :, z] == crop.label),
              cmap="gray", vmin=CT_DISPLAY_WINDOW_HU[0], vmax=CT_DISPLAY_WINDOW_HU[1])
        cam_axis.imshow(cam[:, :, z], aspect=spacing[0] / spacing[1], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    figure.tight_layout()
    return figure


def synthesis_figure(dataroot: Path, results: Path, examples: Sequence[Example]) -> Figure | None:
    """Per example (rows): original CT, pseudo-healthy CT, original labels, pseudo-healthy labels
    (mid-sagittal slice of the crop)."""
    panels = []
    for example in examples:
        fake_ct = results / "CT_fake" / f"{example.key}.nii.gz"
        fake_label = results / "label_fake" / f"{example.key}.nii.gz"
        if not (fake_ct.is_file() and fake_label.is_file()):
            continue
        try:
            crop = load_crop(dataroot, example.key)
            panels.append((example, crop, load_ct(fake_ct).array, load_mask(fake_label).array))
        except (ImageIOError, OSError, ValueError):
            continue
    if not panels:
        return None
    figure = Figure(figsize=(9.6, 2.9 * len(panels)))
    labels_cmap = _label_colormap()
    for row, (example, crop, fake_ct, fake_label) in enumerate(panels):
        z = crop.ct_hu.shape[2] // 2
        spacing = crop.spacing_mm
        images = [(crop.ct_hu[:, :, z], "original CT"), (fake_ct[:, :, z], "pseudo-healthy CT"),
                  (crop.label_map[:, :, z], "original labels"), (fake_label[:, :, z], "pseudo-healthy labels")]
        for column, (image, title) in enumerate(images):
            axis = figure.add_subplot(len(panels), 4, 4 * row + column + 1)
            heading = f"{example.title}\n{title}" if column == 0 else title
            if column < 2:
                _show(axis, image, spacing, heading, cmap="gray",
                      vmin=CT_DISPLAY_WINDOW_HU[0], vmax=CT_DISPLAY_WINDOW_HU[1])
            else:
                _show(axis, _label_display(image), spacing, heading, cmap=labels_cmap, vmin=0, vmax=9)
            if column in (1, 3):
                axis.contour(crop.label_map[:, :, z] == crop.label, levels=[0.5], colors="red", linewidths=0.7)
    figure.tight_layout()
    return figure


def scatter_figure(comparisons: dict[str, pd.DataFrame]) -> Figure | None:
    """Regional RHLV against the true regional loss ratio, one panel per method; filled markers are
    vertebrae next to a fracture."""
    if not comparisons:
        return None
    figure = Figure(figsize=(5.0 * len(comparisons), 4.6))
    colours = {"anterior": "tab:red", "middle": "tab:green", "posterior": "tab:blue"}
    measured = np.concatenate([table[list(RHLV_COLUMN_OF_REGION.values())].to_numpy(dtype=float).ravel()
                               for table in comparisons.values()])
    measured = measured[np.isfinite(measured)]
    low = min(-0.1, float(measured.min())) if measured.size else -0.1  # one y-range for every panel
    high = max(0.7, float(measured.max())) if measured.size else 0.7
    axes = np.atleast_1d(figure.subplots(1, len(comparisons), sharey=True))
    for index, (axis, (method, table)) in enumerate(zip(axes, comparisons.items())):
        for region in REGIONS:
            for adjacent, marker in ((False, "o"), (True, "^")):
                rows = table[table["adjacent_fracture"] == adjacent]
                axis.scatter(rows[f"loss_{region}"], rows[RHLV_COLUMN_OF_REGION[region]], s=18, marker=marker,
                             facecolors=colours[region] if adjacent else "none", edgecolors=colours[region],
                             label=f"{region}{' (adjacent fracture)' if adjacent else ''}")
        axis.plot([low, high], [low, high], color="0.3", linewidth=0.8, linestyle="--")
        for threshold in GENANT_THRESHOLDS:
            axis.axvline(threshold, color="0.8", linewidth=0.6)
            axis.axhline(threshold, color="0.8", linewidth=0.6)
        axis.set_xlim(-0.05, 0.7)
        axis.set_ylim(low, high)
        summary = accuracy_summary(table)
        axis.set_title(f"{method}: MAE {_fmt(summary['mae_anterior'])} / {_fmt(summary['mae_middle'])} / "
                       f"{_fmt(summary['mae_posterior'])} (n={summary['n']})", fontsize=9)
        axis.set_xlabel("true height-loss ratio (phantom truth)")
        if index == 0:
            axis.set_ylabel("measured RHLV (same scale in every panel)")
            axis.legend(fontsize=6, loc="upper left")
    figure.tight_layout()
    return figure


def loss_figure(loss_log: Path) -> Figure | None:
    """Generator loss terms of the training log against iterations."""
    if not loss_log.is_file():
        return None
    log = pd.read_csv(loss_log)
    terms = [term for term in ("G_L1", "coarse_Dice", "G_Dice", "edge", "h", "G_GAN") if term in log.columns]
    if log.empty or not terms:
        return None
    figure = Figure(figsize=(6.4, 3.0))
    axis = figure.add_subplot(1, 1, 1)
    for term in terms:
        axis.plot(log["total_iters"], log[term], label=term, linewidth=1.0)
    axis.set_yscale("log")
    axis.set_xlabel("iteration")
    axis.set_ylabel("weighted loss")
    axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- HTML


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(uri: str | None, alt: str, width: str = "100%") -> str:
    if uri is None:
        return f"<p class='missing'>({html.escape(alt)}: not available)</p>"
    return f"<img src='{uri}' alt='{html.escape(alt)}' style='max-width:{width}'>"


def cohort_section(truth: pd.DataFrame, run: PipelineRun, split: dict[str, dict[str, int]] | None) -> str:
    """One row per case: split, orientation, spacing, vertebrae and the fractures with their truth."""
    rows = []
    for case, vertebrae in truth.groupby("case", sort=True):
        truth_json = read_json(run.paths.raw / case / f"{case}_truth.json")
        case_split = (split_of(split, vertebrae["Vertebra"].iloc[0]) or ("?",))[0] if split else "?"
        fractures = "; ".join(f"{row.name} {row.morphology} {row.loss_ratio:.0%} (g{row.true_grade})"
                              for row in vertebrae.itertuples() if row.morphology != "none")
        rows.append((case, case_split, truth_json.get("orientation", "?"),
                     " x ".join(f"{s:.2f}" for s in truth_json.get("spacing_mm", [])),
                     f"{vertebrae['name'].iloc[0]}-{vertebrae['name'].iloc[-1]} ({len(vertebrae)})",
                     int((vertebrae["true_grade"] > 0).sum()), fractures or "-"))
    grades = ", ".join(f"grade {g}: {int((truth['true_grade'] == g).sum())}" for g in GRADES)
    return (f"<p>{truth['case'].nunique()} cases, {len(truth)} vertebrae ({grades}); "
            f"{int(truth['adjacent_fracture'].sum())} vertebrae have a fractured neighbour. Fractures list "
            "the vertebra, morphology, true height-loss ratio (largest region) and Genant grade; "
            "mild grade-0 deformities appear as well.</p>"
            + _table(["case", "split", "orientation", "spacing (mm)", "vertebrae", "fractured", "deformities"], rows))


def _accuracy_rows(comparisons: dict[str, pd.DataFrame]) -> list[tuple]:
    rows = []
    for method, table in comparisons.items():
        for name, subset in subsets(table).items():
            s = accuracy_summary(subset)
            rows.append((method, name, s["n"], s["mae_anterior"], s["mae_middle"], s["mae_posterior"], s["mae_max"],
                         s["macro_f1_threshold"], s["accuracy_threshold"]))
    return rows


def accuracy_section(comparisons: dict[str, pd.DataFrame]) -> str:
    """MAE per region and of the largest region, threshold-grade macro-F1, per method and subset: over
    every vertebra each method measured, then over the vertebrae all methods measured."""
    header = ["method", "vertebrae", "n", "MAE anterior", "MAE middle", "MAE posterior", "MAE max region",
              "macro-F1 (Genant thresholds)", "accuracy (thresholds)"]
    common = ""
    if len(comparisons) > 1:
        common = ("<p>The same, only on the vertebrae every method measured (the neighbour baseline cannot "
                  "measure a vertebra without a healthy-looking neighbour in the crop):</p>"
                  + _table(header, _accuracy_rows(restrict_to_common(comparisons))))
    matrices = "".join(
        f"<div style='display:inline-block;margin-right:2em'><h4>{html.escape(method)}: true grade (rows) vs "
        "threshold grade (columns)</h4>"
        + _table(["", *GRADES], [(grade, *counts) for grade, counts in zip(GRADES, threshold_confusion(table))])
        + "</div>" for method, table in comparisons.items())
    return (_table(header, _accuracy_rows(comparisons)) + common
            + "<p>MAE: mean absolute difference between the measured RHLV and the true height-loss ratio of the "
              "region (fractions; 0.05 = 5 percentage points). Threshold grade: Genant's 20/25/40 % thresholds "
              "applied to the largest regional RHLV, without any training.</p>" + matrices)


def grading_section(grading: dict[str, dict | None], run: PipelineRun) -> str:
    """SVM grading means (variance) of both methods and their confusion-matrix figures."""
    rows, images = [], []
    for method, report in grading.items():
        if report is None:
            rows.append((method, "n/a", "n/a", "n/a", "n/a", "-", "-"))
            continue
        mean, variance = report["mean"], report["variance"]
        rows.append((method, *[f"{mean[k]:.3f} ({variance[k]:.4f})" for k in GRADING_KEYS],
                     report["n_pool"], report["n_val"]))
    for method, (_, folder) in METHODS.items():
        figure = file_data_uri(getattr(run.paths, folder) / "confusion_matrices.png")
        images.append(f"<h4>{html.escape(method)}</h4>" + _image(figure, f"confusion matrices, {method}"))
    return (_table(["method", "macro-P", "macro-R", "macro-F1", "accuracy", "CV pool (train+test)", "scored (val)"],
                   rows)
            + "<p>Mean over the stratified folds (variance in brackets), each fold scored on the val split "
              "(evaluation/SVM_grading.py). Confusion matrices: rows true grade, columns predicted; one per fold "
              "(its val predictions), and last their sum, which counts every val vertebra once per fold.</p>"
            + "".join(images))


def comparison_section(table: pd.DataFrame | None, run: PipelineRun) -> str:
    """The paper's comparison table of ``--compare`` (ours: mean ± std over folds; the paper's VerSe2019
    figures beside them, labelled as published) and its bar plot."""
    if table is None:
        return "<p class='missing'>(comparison table not available)</p>"
    rows = []
    for _, row in table.iterrows():
        published = [row.get(f"published_{key}") for key in GRADING_KEYS[:3]]
        rows.append((row["method"], *[f"{row[f'{key}_mean']:.3f} ± {row[f'{key}_std']:.3f}" for key in GRADING_KEYS],
                     int(row["folds"]), *["—" if pd.isna(value) else f"{value:.3f}" for value in published]))
    header = ["method", "macro-P", "macro-R", "macro-F1", "accuracy", "folds",
              "published macro-P (VerSe2019)", "published macro-R", "published macro-F1"]
    return (_table(header, rows)
            + "<p>Every method on this phantom cohort with the same splits and the same scorer "
              "(evaluation/compare_methods.py): HealthiVert-GAN and AOT-GAN through synthesis, RHLV and the linear "
              "SVM; 3D SupCon-SENet trained per fold on the CT crops; the neighbour rule's RHLV through the same SVM. "
              "The published columns are the paper's VerSe2019 figures, not results of this run.</p>"
            + _image(file_data_uri(run.paths.comparison / "comparison.png"), "comparison bar plot", "70%"))


def generation_section(generation: dict | None) -> str:
    if generation is None:
        return "<p class='missing'>(generation metrics not available)</p>"
    mean, std = generation["mean"], generation.get("std", {})
    keys = [key for key in mean]
    return (f"<p>Healthy (grade 0) val vertebrae, n = {generation['n_vertebrae']} "
            "(evaluation/generation_eval_sagittal.py): mean (standard deviation).</p>"
            + _table(keys, [[f"{mean[k]:.3f} ({std.get(k, float('nan')):.3f})" for k in keys]]))


def timings_section(run: PipelineRun) -> str:
    rows = [(s.name, s.status, f"{s.wall_s:.1f}", f"{s.cpu_s:.1f}", s.command) for s in run.steps]
    rows.append(("total", "", f"{run.total_wall_s:.1f}", f"{sum(s.cpu_s for s in run.steps):.1f}", ""))
    return _table(["step", "status", "wall (s)", "CPU (s, all cores)", "command"], rows)


def height_map_section(results: Path, examples: Sequence[Example]) -> str:
    parts = []
    for example in examples:
        parts.append(f"<div class='pair'><h4>{html.escape(example.title)}</h4>"
                     + _image(file_data_uri(results / "maps" / f"{example.key}.png"), "HealthiVert-GAN map", "49%")
                     + _image(file_data_uri(results / "maps" / f"{example.key}_neighbours.png"), "neighbour map", "49%")
                     + "</div>")
    return ("<p>Left: against the HealthiVert-GAN pseudo-healthy vertebra; right: against the neighbour "
            "baseline (evaluation/RHLV_quantification.py --maps).</p>" + "".join(parts))


STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; }
th { background: #eee; }
td:last-child { word-break: break-all; }
.missing { color: #a00; }
.ok { color: #070; } .bad { color: #a00; } .warn { color: #b60; }
h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
code { background: #f4f4f4; }
"""


def run_status_html(run: PipelineRun) -> str:
    """The report's headline: green only when every step ran completely; partial steps are named."""
    def names(statuses: tuple[str, ...]) -> str:
        return ", ".join(html.escape(step.name) for step in run.steps if step.status in statuses)

    failed, partial = names(("failed", "skipped")), names(("partial",))
    if failed:
        return f"<span class='bad'>some steps failed or were skipped: {failed}</span>"
    if partial:
        return (f"<span class='warn'>every step ran, but some only partly (items failed, see their logs): "
                f"{partial}</span>")
    return "<span class='ok'>every step ran completely</span>"


def build_html(run: PipelineRun, summary: dict[str, Any], data: ReportData) -> str:
    """The whole report page."""
    paths = run.paths
    sections: list[tuple[str, str]] = []
    config = run.config
    status = run_status_html(run)
    intro = (f"<p>{status}. Phantom cohort of {config.cases} cases ({config.vertebrae}), straightened crops "
             f"{' x '.join(map(str, config.crop_size))} voxels at {config.spacing_mm:g} mm, generator ngf "
             f"{config.gan_ngf}, {config.gan_epochs}+{config.gan_epochs_decay} epochs, "
             f"{'GPU' if run.gpu_ids != '-1' else 'CPU'}. Output folder <code>{html.escape(str(paths.root))}</code>; "
             f"written {time.strftime('%Y-%m-%d %H:%M')}.</p>"
             "<p>All numbers are measured against the phantom truth files (<code>raw/&lt;case&gt;/&lt;case&gt;_truth"
             ".json</code>): the true regional height-loss ratios and Genant grades. With a demo-sized training "
             "budget on a CPU the generator is far from converged; the benchmark "
             "(<code>benchmarks/phantom_accuracy.py</code>) trains longer.</p>")
    sections.append(("Summary", intro + f"<pre>{html.escape(summary_text(run, summary, None))}</pre>"))
    if data.truth is not None:
        sections.append(("Cohort", cohort_section(data.truth, run, data.split)))
        available = [p.name[: -len(".nii.gz")] for p in (paths.dataroot / "label").glob("*.nii.gz")]
        examples = pick_examples(data.truth, data.split, available)
    else:
        sections.append(("Cohort", "<p class='missing'>(no phantom truth found)</p>"))
        examples = []
    attention = attention_figure(paths.dataroot, paths.heatmap, examples) if examples else None
    sections.append(("Straightened crops and attention maps",
                     "<p>Mid-sagittal slice of the straightened CT crop (superior at the top, anterior on the left; "
                     "the target body outlined in yellow) and the classifier's Grad-CAM++ map, titled with the share "
                     "of the map on the target body.</p>"
                     "<p class='warn'>Known limitation: Grad-CAM++ of a small classifier often puts its attention "
                     "outside the fractured body (on an endplate, a neighbour or the background); panels marked "
                     "MISSES TARGET show it. There the generator's 1 &minus; CAM input does not mark the fractured "
                     "region as unreliable, so the synthesis may keep part of the fracture: read those vertebrae's "
                     "RHLV with care.</p>"
                     + _image(figure_data_uri(attention) if attention else None, "crops and attention maps")))
    synthesis = synthesis_figure(paths.dataroot, paths.results, examples) if examples else None
    sections.append(("Original vs pseudo-healthy",
                     "<p>Mid-sagittal slices; the original target outline in red on the synthesized images. "
                     "A healthy vertebra should come back unchanged, a fractured one taller.</p>"
                     + _image(figure_data_uri(synthesis) if synthesis else None, "synthesis examples")))
    sections.append(("Height-loss maps", height_map_section(paths.results, examples)))
    scatter = scatter_figure(data.comparisons)
    sections.append(("RHLV against the true height loss",
                     "<p>Each vertebra contributes three points (anterior, middle, posterior third); the dashed line "
                     "is perfect agreement, grey lines are Genant's 20/25/40 % thresholds; triangles are vertebrae "
                     "next to a fractured one.</p>"
                     + _image(figure_data_uri(scatter) if scatter else None, "RHLV scatter")
                     + accuracy_section(data.comparisons)))
    sections.append(("Genant grading (linear SVM on Pre/Mid/Post RHLV)", grading_section(data.grading, run)))
    if data.method_comparison is not None or run.config.compare:
        sections.append(("Method comparison (the paper's table)", comparison_section(data.method_comparison, run)))
    sections.append(("Generation metrics", generation_section(data.generation)))
    losses = loss_figure(paths.checkpoints / "healthivert" / "loss_log.csv")
    sections.append(("Training losses", _image(figure_data_uri(losses) if losses else None, "training losses", "70%")))
    sections.append(("Timings", timings_section(run)
                     + "<p>Wall-clock seconds of each script (as a subprocess) and the CPU seconds it used.</p>"))
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HealthiVert demo report</title>"
            f"<style>{STYLE}</style></head><body><h1>HealthiVert demo report</h1>{body}</body></html>")


def write_report(run: PipelineRun, summary: dict[str, Any] | None = None, data: ReportData | None = None) -> Path:
    """Write ``<out>/report/index.html`` (atomically) and return its path."""
    data = data if data is not None else load_report_data(run)
    summary = summary if summary is not None else demo_summary(run, data)
    page = build_html(run, summary, data)
    path = run.paths.report
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, encoding="utf-8") as handle:
        handle.write(page)
    return path
