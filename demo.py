"""One-command demo: the whole HealthiVert-GAN pipeline on a fresh phantom cohort, with an HTML report.

    python demo.py [--out demo_out] [--device cpu|cuda] [--quick] [--compare]

Runs, in order, the same scripts a user runs by hand (each as a subprocess, its output in
``<out>/logs/``): phantom cohort -> centroids -> straightening -> fracture classifier -> attention
maps -> HealthiVert-GAN training -> iterative synthesis -> RHLV (HealthiVert-GAN and the neighbour
baseline) -> SVM grading (both) -> generation metrics. Then it writes ``<out>/report/index.html``
(self-contained) and prints a one-screen summary with the numbers against the phantom truth.
``--compare`` also trains the paper's baselines on the same cohort and splits (AOT-GAN through the same
synthesis, RHLV and SVM grading; the 3D SupCon-SENet grader on the same folds) and builds the paper's
comparison table (``evaluation/compare_methods.py``) with the neighbour rule beside them.

The demo uses CPU-sized settings (64 x 64 x 32 crops at 2 mm, a small classifier, a narrow generator
(ngf 8) and a short training budget); every script keeps the paper's sizes as its own defaults.
``--quick`` is a smaller cohort and a shorter training, to check that everything runs (its numbers
mean little). Each step runs on one CPU thread by default (``--threads``): these small tensors gain
nothing from more, and on a busy machine two OpenMP threads were several times slower.

A step whose inputs are missing (an earlier step failed) is skipped; a step that wrote its outputs
but reported failed items (e.g. vertebrae the RHLV could not measure) is ``partial``. Exit status 0
when every step ran and wrote its outputs, 1 otherwise; the report is written in both cases.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from pipeline.run import FULL, QUICK, DemoConfig
from pipeline.runner import gpu_ids_for, run_pipeline
from util.fileio import OutputDirError, write_json

MIN_CASES = 3  # the split needs at least one case each in train, val and test
QUICK_DURATION = "480 instead of 2400 training iterations"  # the README says the same; wall time depends on the machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cpu, cuda (the first GPU) or auto: cuda when available (default)")
    parser.add_argument("--quick", action="store_true",
                        help=f"4 cases and a shorter training ({QUICK_DURATION}): checks that everything runs; "
                             "the test suite runs it")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases, T10-L5 each (default 8, --quick 4)")
    parser.add_argument("--seed", type=int, default=None, help="cohort and training seed (default 1)")
    parser.add_argument("--gan_epochs", type=int, default=None,
                        help="train.py --n_epochs (default 300, --quick 120); decay epochs are a third of it")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per step (OMP/MKL_NUM_THREADS; 0: PyTorch's default; default 1). The demo's "
                             "small tensors run fastest on one thread; on a busy machine more threads are much slower")
    parser.add_argument("--compare", action="store_true",
                        help="also train AOT-GAN and the 3D SupCon-SENet grader and build the paper's comparison table")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo run in --out (removes only the demo's own files)")
    parser.add_argument("--verbose", action="store_true", help="also stream every step's output")
    return parser.parse_args(argv)


def impossible_settings(args: argparse.Namespace) -> str | None:
    """Why the demo settings cannot work (checked before any step runs), or ``None``."""
    if args.cases is not None and args.cases < MIN_CASES:
        return (f"--cases {args.cases}: the demo needs at least {MIN_CASES} cases (one each for the train, "
                "val and test splits)")
    if args.gan_epochs is not None and args.gan_epochs < 1:
        return f"--gan_epochs {args.gan_epochs}: must be >= 1"
    if args.threads < 0:
        return f"--threads {args.threads}: must be >= 0"
    return None


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The preset (--quick or full) with the command-line overrides applied."""
    config = QUICK if args.quick else FULL
    if args.cases is not None:
        config = replace(config, cases=args.cases)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.gan_epochs is not None:
        config = replace(config, gan_epochs=args.gan_epochs, gan_epochs_decay=max(0, args.gan_epochs // 3))
    if args.compare:
        config = replace(config, compare=True)
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when every step succeeded and the report was written."""
    args = parse_args(argv)
    problem = impossible_settings(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    config = config_from_args(args)
    try:
        gpu_ids = gpu_ids_for(args.device)
        print(f"HealthiVert demo{' (--quick)' if args.quick else ''}: {config.cases} phantom cases "
              f"({config.vertebrae}), crops {'x'.join(map(str, config.crop_size))} at {config.spacing_mm:g} mm, "
              f"{'GPU' if gpu_ids != '-1' else 'CPU'}; output in {args.out.resolve()}")
        run = run_pipeline(config, args.out, gpu_ids, args.overwrite, args.verbose, threads=args.threads)
    except (FileExistsError, OutputDirError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from pipeline.report_data import demo_summary, load_report_data, summary_text  # matplotlib only when reporting
    from pipeline.run_report import write_report

    started = time.perf_counter()
    data = load_report_data(run)
    summary = demo_summary(run, data)
    summary["machine"] = (f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}")
    summary["config"] = asdict(config)
    report_path = write_report(run, summary, data)
    summary["report_s"] = round(time.perf_counter() - started, 2)
    write_json(run.paths.summary_json, summary)
    print(summary_text(run, summary, report_path))
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
