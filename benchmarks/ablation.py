"""Module ablation on the phantom cohort: what EEM, SHRM, HGAM and iterative synthesis each add.

    python benchmarks/ablation.py [--out DIR] [--cases 8] [--iterations 400] [--seed 1] [--threads 1] [--quick]
    python benchmarks/ablation.py --out DIR --tabulate_only          # the table of an earlier run again

One phantom cohort, its straightened crops, classifier and attention maps are made once (``DIR/cohort``,
the demo's first steps); then for the full model and each single-module ablation (``--no_eem``,
``--no_shrm``, ``--no_hgam`` at training, ``--no_iterative`` at synthesis; ``models.module_switches``)
the demo's later steps (training with ``--max_steps ITERATIONS``, synthesis, RHLV, SVM grading,
generation metrics) run in ``DIR/<variant>`` on that cohort with the same seed and budget. Every
step is the repository script ``demo.py`` runs (``pipeline.steps.build_steps`` / ``pipeline.runner.run_step``).

Writes ``DIR/ablation.json`` and ``DIR/ablation.md``: one Markdown row per variant with the mean
absolute error of the anterior / middle / posterior RHLV against the phantom truth over all
vertebrae and over those next to a fractured vertebra (``evaluation.phantom_truth``), the
macro-F1 of the Genant grade read with Genant's thresholds and of the linear-SVM grading (mean of
its folds), and the generation PSNR / SSIM / Dice (``evaluation/generation_eval_sagittal.py``);
the JSON also holds where the cohort's attention maps point (``Attention.localisation``, shared by
every variant but ``--no_hgam``, which does not use them).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from Attention.localisation import LOCALISATION_FILE, summary_lines
from evaluation.phantom_truth import accuracy_summary, subsets
from pipeline.report_data import load_report_data
from pipeline.run import FULL, QUICK, DemoConfig, DemoPaths, PipelineRun, Step, StepResult
from pipeline.runner import gpu_ids_for, prepare_out_dir, run_step, skipped_result
from pipeline.steps import build_steps
from util.cli import tolerate_unencodable_stdout
from util.fileio import atomic_write, prepare_output_dir, read_json, write_json

SHARED_STEPS = ("phantoms", "centroids", "straightening", "classifier", "attention maps")
VARIANT_STEPS = ("training", "synthesis", "RHLV", "SVM grading", "generation metrics")
SHARED_ENTRIES = ("raw", "straightened", "heatmap", "vertebra_data.json")  # linked from the cohort into each variant
METHOD = "HealthiVert-GAN"
ADJACENT = "adjacent fracture"
RESULT_FILE = "ablation.json"
COLUMNS = ("MAE ant. (all)", "MAE mid. (all)", "MAE post. (all)", "MAE ant. (next to fracture)",
           "MAE mid. (next to fracture)", "MAE post. (next to fracture)", "macro-F1 thresholds", "macro-F1 SVM",
           "PSNR", "SSIM", "Dice")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: its folder name and the flags it adds to train.py and to the synthesis."""

    name: str
    slug: str
    train_flags: tuple[str, ...] = ()
    synthesis_flags: tuple[str, ...] = ()


VARIANTS = (
    Variant("full model", "full"),
    Variant("no EEM (--no_eem)", "no_eem", ("--no_eem",)),
    Variant("no SHRM (--no_shrm)", "no_shrm", ("--no_shrm",)),
    Variant("no HGAM (--no_hgam)", "no_hgam", ("--no_hgam",)),
    Variant("no iterative synthesis (--no_iterative)", "no_iterative", (), ("--no_iterative",)),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/ablation"), help="output folder")
    parser.add_argument("--cases", type=int, default=None,
                        help=f"phantom cases, T10-L5 each (default {FULL.cases}; {QUICK.cases} with --quick)")
    parser.add_argument("--iterations", type=int, default=400,
                        help="generator training iterations of every variant (train.py --max_steps)")
    parser.add_argument("--seed", type=int, default=FULL.seed, help="cohort and training seed")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each step (0: no limit)")
    parser.add_argument("--quick", action="store_true",
                        help="the demo's --quick sizes (4 cases, one-epoch classifier); --iterations still applies")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="as in demo.py")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--tabulate_only", action="store_true",
                        help=f"do not run anything: tabulate the variants already in --out (its {RESULT_FILE})")
    args = parser.parse_args(argv)
    if (args.cases is not None and args.cases < 2) or args.iterations < 1 or args.threads < 0:
        parser.error("--cases must be >= 2, --iterations >= 1 and --threads >= 0")
    return args


def run_steps(steps: Sequence[Step], log_dir: Path, threads: int | None,
              first_index: int = 1) -> list[StepResult]:
    """Run ``steps`` in order with ``pipeline.runner.run_step``; a step whose inputs are missing is skipped."""
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for index, step in enumerate(steps, start=first_index):
        result = skipped_result(step) or run_step(step, log_dir, index, threads=threads)
        print(f"  {step.name:<22} {result.status:<10} {result.wall_s:7.1f} s  log: {result.log}", flush=True)
        results.append(result)
    return results


def variant_steps(config: DemoConfig, paths: DemoPaths, gpu_ids: str, variant: Variant,
                  iterations: int) -> list[Step]:
    """The demo's training-to-evaluation steps in ``paths``, with the variant's flags and the iteration budget."""
    extra = {"training": [*variant.train_flags, "--max_steps", str(iterations)],
             "synthesis": list(variant.synthesis_flags)}
    return [replace(step, args=[*step.args, *extra.get(step.name, [])])
            for step in build_steps(config, paths, gpu_ids) if step.name in VARIANT_STEPS]


def link_cohort(cohort: DemoPaths, variant_root: Path) -> DemoPaths:
    """``variant_root`` with links to the cohort's raw data, crops, maps and split (read, never written)."""
    variant_root.mkdir(parents=True, exist_ok=True)
    for name in SHARED_ENTRIES:
        link = variant_root / name
        if not link.exists():
            link.symlink_to(cohort.root / name, target_is_directory=(cohort.root / name).is_dir())
    return DemoPaths(variant_root)


def variant_metrics(config: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """The table's numbers of one variant's run (NaN where a step produced nothing)."""
    data = load_report_data(PipelineRun(config, paths, "-1"))
    metrics: dict[str, Any] = {}
    comparison = data.comparisons.get(METHOD)
    if comparison is not None:
        parts = subsets(comparison)
        for label, subset in (("all", parts["all"]), ("adjacent", parts[ADJACENT])):
            summary = accuracy_summary(subset)
            metrics[f"n_{label}"] = summary["n"]
            for region in ("anterior", "middle", "posterior"):
                metrics[f"mae_{region}_{label}"] = summary[f"mae_{region}"]
            if label == "all":
                metrics["macro_f1_threshold"] = summary["macro_f1_threshold"]
    grading = data.grading.get(METHOD)
    metrics["macro_f1_svm"] = grading["mean"]["macro_f1"] if grading else math.nan
    mean = data.generation["mean"] if data.generation else {}
    for key in ("PSNR", "SSIM", "Dice"):
        metrics[key] = mean.get(key, math.nan)
    return metrics


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """One Markdown row per variant (``rows``: variant name -> ``variant_metrics``), columns ``COLUMNS``."""
    keys = [f"mae_{r}_all" for r in ("anterior", "middle", "posterior")] + \
        [f"mae_{r}_adjacent" for r in ("anterior", "middle", "posterior")] + \
        ["macro_f1_threshold", "macro_f1_svm", "PSNR", "SSIM", "Dice"]
    lines = ["| variant | n (all / next to fracture) | " + " | ".join(COLUMNS) + " |",
             "|" + " --- |" * (len(COLUMNS) + 2)]
    for name, metrics in rows.items():
        digits = {"PSNR": 2}
        cells = [_cell(metrics.get(key), digits.get(key, 3)) for key in keys]
        counts = f"{metrics.get('n_all', '–')} / {metrics.get('n_adjacent', '–')}"
        lines.append(f"| {name} | {counts} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out: Path, rows: Mapping[str, Mapping[str, Any]], info: Mapping[str, Any]) -> str:
    """Write ``ablation.json`` and ``ablation.md`` into ``out``; returns the Markdown table."""
    table = markdown_table(rows)
    write_json(out / RESULT_FILE, {**info, "variants": rows, "table_markdown": table})
    with atomic_write(out / "ablation.md", encoding="utf-8") as handle:
        handle.write(table + "\n")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    base = QUICK if args.quick else FULL
    # every epoch has at least one iteration, so --max_steps ends the training; constant learning rate
    config = replace(base, cases=args.cases or base.cases, seed=args.seed, gan_epochs=args.iterations,
                     gan_epochs_decay=0)
    gpu_ids = gpu_ids_for(args.device)
    if args.tabulate_only:
        if not (out / RESULT_FILE).is_file():
            print(f"error: {out / RESULT_FILE}: no earlier ablation run to tabulate", file=sys.stderr)
            return 2
        info = {k: v for k, v in read_json(out / RESULT_FILE).items() if k not in ("variants", "table_markdown")}
        config = DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()})
        rows = {v.name: variant_metrics(config, DemoPaths(out / v.slug)) for v in VARIANTS}
        print(write_outputs(out, rows, info))
        return 0
    try:
        prepare_output_dir(out, "ablation output folder (--out)")
        earlier = [out / v.slug for v in VARIANTS if (out / v.slug).exists()]
        if earlier and not args.overwrite:
            raise FileExistsError(f"{earlier[0]}: holds an earlier ablation run; use --overwrite or another --out")
        for root in earlier:  # a variant folder holds links to the cohort (not followed) and its own outputs
            shutil.rmtree(root)
        prepare_out_dir(out / "cohort", args.overwrite)
    except (FileExistsError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads = args.threads or None
    started = time.perf_counter()
    cohort = DemoPaths(out / "cohort")
    print(f"cohort -> {cohort.root}")
    shared = [s for s in build_steps(config, cohort, gpu_ids) if s.name in SHARED_STEPS]
    results = {"cohort": run_steps(shared, cohort.logs, threads)}
    localisation_file = cohort.heatmap / LOCALISATION_FILE  # written by the attention-map step
    localisation = read_json(localisation_file)["summary"] if localisation_file.is_file() else None
    if localisation:
        print("\n".join(summary_lines(localisation)))
    rows: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        root = out / variant.slug
        paths = link_cohort(cohort, root)
        print(f"{variant.name} -> {root}")
        steps = variant_steps(config, paths, gpu_ids, variant, args.iterations)
        results[variant.slug] = run_steps(steps, paths.logs, threads, first_index=len(shared) + 1)
        rows[variant.name] = variant_metrics(config, paths)
    failed = [f"{name}: {r.name} ({r.status})" for name, rs in results.items() for r in rs if r.status != "ok"]
    info = {"command": shlex.join(["python", "benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "config": asdict(config), "iterations": args.iterations, "threads": args.threads,
            "total_wall_s": round(time.perf_counter() - started, 1), "failed_steps": failed,
            "attention_localisation": localisation,
            "steps": {name: [{"name": r.name, "status": r.status, "wall_s": round(r.wall_s, 1)} for r in rs]
                      for name, rs in results.items()}}
    table = write_outputs(out, rows, info)
    print(f"\ncommand: {info['command']}\nbudget: {args.iterations} generator iterations per variant at batch "
          f"{config.gan_batch_size}; {info['total_wall_s'] / 60:.1f} min wall\n\n{table}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    tolerate_unencodable_stdout()
    sys.exit(main())
