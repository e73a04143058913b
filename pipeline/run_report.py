"""The demo run's self-contained HTML report, ``<out>/report/index.html``: headline status, cohort,
figures (``pipeline.figures``), accuracy against the phantom truth, grading, the comparison table,
generation metrics, training losses and timings, from a ``PipelineRun`` and its ``ReportData``."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from Attention.localisation import LOCALISATION_FILE, TARGET_WINDOW_TITLE, summary_lines
from data.crops import split_of
from evaluation.phantom_truth import GRADES, accuracy_summary, restrict_to_common, subsets, threshold_confusion
from pipeline.figures import attention_figure, loss_figure, scatter_figure, synthesis_figure
from pipeline.html import figure_data_uri, file_data_uri, html_table, image_tag
from pipeline.report_data import (
    GRADING_KEYS,
    Example,
    ReportData,
    demo_summary,
    load_report_data,
    pick_examples,
    summary_text,
)
from pipeline.run import PipelineRun
from util.fileio import read_json
from util.html import html_document, write_html


def localisation_section(path: Path) -> str:
    """Where the cohort's attention maps point (``grad_CAM_3d_sagittal.py``'s ``localisation.json``), as a
    preformatted block; a note when the maps have no such summary."""
    if not path.is_file():
        return "<p class='missing'>(no localisation summary of the attention maps)</p>"
    document = read_json(path)
    lines = summary_lines(document["summary"], "crop maps")
    if "target_window" in document:
        lines += summary_lines(document["target_window"]["summary"], TARGET_WINDOW_TITLE)
    return "<pre>" + html.escape("\n".join(lines)) + "</pre>"

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
            + html_table(["case", "split", "orientation", "spacing (mm)", "vertebrae", "fractured", "deformities"],
                         rows))


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
                  + html_table(header, _accuracy_rows(restrict_to_common(comparisons))))
    matrices = "".join(
        f"<div style='display:inline-block;margin-right:2em'><h4>{html.escape(method)}: true grade (rows) vs "
        "threshold grade (columns)</h4>"
        + html_table(["", *GRADES], [(grade, *counts) for grade, counts in zip(GRADES, threshold_confusion(table))])
        + "</div>" for method, table in comparisons.items())
    return (html_table(header, _accuracy_rows(comparisons)) + common
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
    for method in run.paths.methods:
        figure = file_data_uri(method.grading / "confusion_matrices.png")
        images.append(f"<h4>{html.escape(method.method)}</h4>"
                      + image_tag(figure, f"confusion matrices, {method.method}"))
    header = ["method", "macro-P", "macro-R", "macro-F1", "accuracy", "CV pool (train+test)", "scored (val)"]
    return (html_table(header, rows)
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
    return (html_table(header, rows)
            + "<p>Every method on this phantom cohort with the same splits and the same scorer "
              "(evaluation/compare_methods.py): HealthiVert-GAN and AOT-GAN through synthesis, RHLV and the linear "
              "SVM; 3D SupCon-SENet trained per fold on the CT crops; the neighbour rule's RHLV through the same SVM. "
              "The published columns are the paper's VerSe2019 figures, not results of this run.</p>"
            + image_tag(file_data_uri(run.paths.comparison / "comparison.png"), "comparison bar plot", "70%"))


def generation_section(generation: dict | None) -> str:
    if generation is None:
        return "<p class='missing'>(generation metrics not available)</p>"
    mean, std = generation["mean"], generation.get("std", {})
    keys = [key for key in mean]
    return (f"<p>Healthy (grade 0) val vertebrae, n = {generation['n_vertebrae']} "
            "(evaluation/generation_eval_sagittal.py): mean (standard deviation).</p>"
            + html_table(keys, [[f"{mean[k]:.3f} ({std.get(k, float('nan')):.3f})" for k in keys]]))


def timings_section(run: PipelineRun) -> str:
    rows = [(s.name, s.status, f"{s.wall_s:.1f}", f"{s.cpu_s:.1f}", s.command) for s in run.steps]
    rows.append(("total", "", f"{run.total_wall_s:.1f}", f"{sum(s.cpu_s for s in run.steps):.1f}", ""))
    return html_table(["step", "status", "wall (s)", "CPU (s, all cores)", "command"], rows)


def height_map_section(maps: Path, examples: Sequence[Example]) -> str:
    parts = []
    for example in examples:
        parts.append(f"<div class='pair'><h4>{html.escape(example.title)}</h4>"
                     + image_tag(file_data_uri(maps / f"{example.key}.png"), "HealthiVert-GAN map", "49%")
                     + image_tag(file_data_uri(maps / f"{example.key}_neighbours.png"), "neighbour map", "49%")
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
    fractured_labels = (None if data.truth is None else
                        {case: set(rows.loc[rows["true_grade"] > 0, "label"].astype(int))
                         for case, rows in data.truth.groupby("case")})
    attention = attention_figure(paths.dataroot, paths.heatmap, examples, fractured_labels) if examples else None
    sections.append(("Straightened crops and attention maps",
                     "<p>Mid-sagittal slice of the straightened CT crop (superior at the top, anterior on the left; "
                     "the target body outlined in yellow) and the classifier's Grad-CAM++ map, titled with the share "
                     "of the map on the target body. Each vertebra's map is weighted by its fracture probability, "
                     "so a fractured neighbour is marked too: the generator reads 1 &minus; CAM outside the masked "
                     "band and so trusts the healthy neighbours more than the fractured ones. A fractured target "
                     "whose map peaks on no fractured body is marked MISSES TARGET.</p>"
                     + localisation_section(paths.heatmap / LOCALISATION_FILE)
                     + image_tag(figure_data_uri(attention) if attention else None, "crops and attention maps")))
    synthesis = synthesis_figure(paths.dataroot, paths.results, examples) if examples else None
    sections.append(("Original vs pseudo-healthy",
                     "<p>Mid-sagittal slices; the original target outline in red on the synthesized images. "
                     "A healthy vertebra should come back unchanged, a fractured one taller.</p>"
                     + image_tag(figure_data_uri(synthesis) if synthesis else None, "synthesis examples")))
    sections.append(("Height-loss maps", height_map_section(paths.maps, examples)))
    scatter = scatter_figure(data.comparisons)
    sections.append(("RHLV against the true height loss",
                     "<p>Each vertebra contributes three points (anterior, middle, posterior third); the dashed line "
                     "is perfect agreement, grey lines are Genant's 20/25/40 % thresholds; triangles are vertebrae "
                     "next to a fractured one.</p>"
                     + image_tag(figure_data_uri(scatter) if scatter else None, "RHLV scatter")
                     + accuracy_section(data.comparisons)))
    sections.append(("Genant grading (linear SVM on Pre/Mid/Post RHLV)", grading_section(data.grading, run)))
    if data.method_comparison is not None or run.config.compare:
        sections.append(("Method comparison (the paper's table)", comparison_section(data.method_comparison, run)))
    sections.append(("Generation metrics", generation_section(data.generation)))
    losses = loss_figure(paths.loss_log)
    sections.append(("Training losses",
                     image_tag(figure_data_uri(losses) if losses else None, "training losses", "70%")))
    sections.append(("Timings", timings_section(run)
                     + "<p>Wall-clock seconds of each script (as a subprocess) and the CPU seconds it used.</p>"))
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    return html_document("HealthiVert demo report", f"<h1>HealthiVert demo report</h1>{body}", STYLE)


def write_report(run: PipelineRun, summary: dict[str, Any] | None = None, data: ReportData | None = None) -> Path:
    """Write ``<out>/report/index.html`` (atomically) and return its path."""
    data = data if data is not None else load_report_data(run)
    summary = summary if summary is not None else demo_summary(run, data)
    return write_html(run.paths.report, build_html(run, summary, data))
