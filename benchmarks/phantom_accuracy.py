"""Phantom accuracy benchmark: RHLV and Genant grading of HealthiVert-GAN and the neighbour baseline
against the phantom truth, on a larger cohort with a longer CPU training budget than the demo.

    python benchmarks/phantom_accuracy.py [--out DIR] [--cases 12] [--gan_epochs 200] [--device cpu]
    python benchmarks/phantom_accuracy.py --out DIR --tabulate_only      # tables of an earlier run again

Runs the demo pipeline (``pipeline.runner.run_pipeline``: the same scripts, in the same order) on a fresh
phantom cohort, then prints markdown tables (for benchmarks/README.md): per method and vertebra
subset (all, next to a fractured vertebra, not next to one, fractured), the mean absolute error of
the anterior / middle / posterior RHLV against the true regional height-loss ratio, of the largest
regional RHLV against the true loss ratio, the macro-F1 of the Genant grade read off the largest
regional RHLV with Genant's thresholds against the true grade, and (all vertebrae) the macro-F1 of
the linear-SVM grading of evaluation/SVM_grading.py (mean of its folds, scored on val). The first
table uses every vertebra each method could measure, the second only those both methods measured.
It also writes ``DIR/report/index.html`` and ``DIR/phantom_accuracy.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.phantom_truth import accuracy_summary, restrict_to_common, subsets
from pipeline.report_data import demo_summary, load_report_data
from pipeline.run import FULL, DemoConfig, DemoPaths, PipelineRun, StepResult
from pipeline.run_report import write_report
from pipeline.runner import gpu_ids_for, run_pipeline
from util.cli import tolerate_unencodable_stdout
from util.fileio import read_json, write_json

# the attention settings of the tables in benchmarks/README.md: whole slices, per-slice maps (the published ones)
PUBLISHED_ATTENTION = dict(classifier_slices_per_vertebra=8, classifier_view_mm=0.0, classifier_vertebra_margin_mm=None,
                           cam_normalise="slice", cam_windows="target")
BENCHMARK = replace(FULL, cases=12, classifier_epochs=6, classifier_epochs_decay=6, classifier_slices=20,
                    cam_slices=20, gan_epochs=200, gan_epochs_decay=66, **PUBLISHED_ATTENTION)
RESULT_FILE = "phantom_accuracy.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/phantom_accuracy"), help="output folder")
    parser.add_argument("--cases", type=int, default=BENCHMARK.cases, help="phantom cases (T10-L5 each)")
    parser.add_argument("--seed", type=int, default=BENCHMARK.seed, help="cohort and training seed")
    parser.add_argument("--gan_epochs", type=int, default=BENCHMARK.gan_epochs,
                        help="train.py --n_epochs (decay epochs: a third of it)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="as in demo.py")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--compare", action="store_true",
                        help="also train AOT-GAN and the 3D SupCon-SENet grader and print the paper's comparison table")
    parser.add_argument("--tabulate_only", action="store_true",
                        help=f"do not run the pipeline: tabulate the run already in --out (its {RESULT_FILE})")
    return parser.parse_args(argv)


def training_budget(run: PipelineRun) -> str:
    """Iterations, batch, epochs and the training step's wall/CPU time, from the run's loss log and steps."""
    config = run.config
    log = run.paths.loss_log
    iterations = int(pd.read_csv(log)["total_iters"].iloc[-1]) if log.is_file() else "?"
    training = next((s for s in run.steps if s.name == "training"), None)
    seconds = f", {training.wall_s / 60:.1f} min wall / {training.cpu_s / 60:.1f} min CPU" if training else ""
    return (f"{config.gan_epochs}+{config.gan_epochs_decay} epochs, {iterations} iterations at batch "
            f"{config.gan_batch_size}, ngf {config.gan_ngf}, ndf {config.gan_ndf}{seconds}")


def markdown_table(comparisons: dict[str, pd.DataFrame], svm_f1: dict[str, float | None]) -> str:
    """One row per method and vertebra subset; ``svm_f1`` (per method) goes in the 'all' rows."""
    lines = ["| method | vertebrae | n | MAE anterior | MAE middle | MAE posterior | MAE largest region "
             "| macro-F1 (Genant thresholds) | macro-F1 (SVM, val) |", "|" + " --- |" * 9]
    for method, table in comparisons.items():
        for name, rows in subsets(table).items():
            s = accuracy_summary(rows)
            svm = svm_f1.get(method)
            svm_text = f"{svm:.3f}" if (svm is not None and name == "all") else ""
            lines.append(f"| {method} | {name} | {s['n']} | {s['mae_anterior']:.3f} | {s['mae_middle']:.3f} | "
                         f"{s['mae_posterior']:.3f} | {s['mae_max']:.3f} | {s['macro_f1_threshold']:.3f} | "
                         f"{svm_text} |")
    return "\n".join(lines)


def tables(comparisons: dict[str, pd.DataFrame], summary: dict[str, Any]) -> tuple[str, str]:
    """The benchmark tables: every vertebra each method measured, and the vertebrae both measured."""
    svm_f1 = {method: (mean["macro_f1"] if mean else None) for method, mean in summary["grading"].items()}
    return markdown_table(comparisons, svm_f1), markdown_table(restrict_to_common(comparisons), {})


def step_from_summary(step: dict[str, Any]) -> StepResult:
    """A step result back from its ``demo_summary`` entry (status, seconds, command, log)."""
    status = step["status"]
    returncode = None if status == "skipped" else (0 if status == "ok" else 1)
    present = 0 if status in ("failed", "skipped") else 1
    return StepResult(step["name"], step["command"], "", returncode, present, 1, step["wall_s"], step["cpu_s"],
                           step["log"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result_path = args.out / RESULT_FILE
    if args.tabulate_only:
        if not result_path.is_file():
            print(f"error: {result_path}: no earlier benchmark run to tabulate", file=sys.stderr)
            return 2
        info = read_json(result_path)
        config = DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()})
        run = PipelineRun(config, DemoPaths(args.out.resolve()), info.get("gpu_ids", "-1"))
        run.steps = [step_from_summary(step) for step in info["steps"]]
    else:
        config = replace(BENCHMARK, cases=args.cases, seed=args.seed, gan_epochs=args.gan_epochs,
                         gan_epochs_decay=args.gan_epochs // 3, compare=args.compare)
        started = time.perf_counter()
        try:
            run = run_pipeline(config, args.out, gpu_ids_for(args.device), args.overwrite)
        except (FileExistsError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        info = {"command": shlex.join(["python", "benchmarks/phantom_accuracy.py",
                                       *(sys.argv[1:] if argv is None else argv)]),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "config": asdict(config), "training_budget": training_budget(run),
                "total_wall_s": round(time.perf_counter() - started, 1)}
    data = load_report_data(run)
    if not data.comparisons:
        print(f"error: no RHLV table to compare with the truth; see the logs in {run.paths.logs}", file=sys.stderr)
        return 1
    summary = demo_summary(run, data)
    report = write_report(run, summary, data)
    measured, common = tables(data.comparisons, summary)
    write_json(result_path, {**summary, **info, "table_markdown": measured, "table_common_markdown": common})
    cohort = summary.get("cohort", {})
    print(f"\nmachine: {info['machine']}\ncommand: {info['command']}\n"
          f"cohort: {cohort.get('cases')} cases ({config.vertebrae}), {cohort.get('vertebrae')} vertebrae, "
          f"{cohort.get('fractured')} fractured, {cohort.get('adjacent_fracture')} next to a fracture; "
          f"crops {'x'.join(map(str, config.crop_size))} at {config.spacing_mm:g} mm\n"
          f"training budget: {info['training_budget']}\npipeline wall time: {info['total_wall_s'] / 60:.1f} min\n\n"
          f"Every vertebra each method measured:\n\n{measured}\n\n"
          f"Only the vertebrae both methods measured:\n\n{common}\n\nreport: {report}")
    comparison = run.paths.comparison / "comparison.md"
    if config.compare and comparison.is_file():
        table = comparison.read_text(encoding="utf-8")
        print(f"\nThe paper's comparison table (evaluation/compare_methods.py):\n\n{table}")
    return 0 if run.ok else 1


if __name__ == "__main__":
    tolerate_unencodable_stdout()
    sys.exit(main())
