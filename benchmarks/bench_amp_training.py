"""Does bfloat16 mixed precision train like float32? Two ``train.py`` runs on the phantom cohort from one seed.

The cohort is made with the project's own steps, as ``demo.py --quick`` does (``data/make_phantoms.py``,
``straighten/location_json_local.py``, ``straighten/straighten_mask_3d.py``: 64 x 64 x 32 crops at 2 mm)
unless ``--cohort`` names an existing one. Then ``train.py`` runs ``--steps`` iterations in float32 and
the same with ``--amp --amp_dtype bf16`` (CPU: bfloat16 autocast, float32 master weights, the three
discriminators included), same seed, same options, constant learning rate (so that a run cut short is
a prefix of the full one), validating every ``--val_freq`` epochs. The table lists the validation
band L1 (CT in [-1, 1]) and height error (mm) of both runs at every validation, and the verdict compares
the last validation both runs reached: each figure within ``--tolerance`` (10 %) of the other's.

    python benchmarks/bench_amp_training.py --out bench_amp [--steps 2000] [--concurrent]
    python benchmarks/bench_amp_training.py --out bench_amp --tabulate    # only the table of finished runs
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = {"fp32": [], "bf16": ["--amp", "--amp_dtype", "bf16"]}
METRICS = ("band_l1", "height_error_mm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of the cohort and of both runs")
    parser.add_argument("--cohort", type=Path, default=None,
                        help="existing cohort root (vertebra_data.json, straightened/); default: make one in --out")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases of a new cohort (T10-L5 each)")
    parser.add_argument("--seed", type=int, default=1, help="phantom and training seed")
    parser.add_argument("--steps", type=int, default=2000, help="training iterations of each run")
    parser.add_argument("--val_freq", type=int, default=20, help="validate every this many epochs")
    parser.add_argument("--batch_size", type=int, default=4, help="training batch")
    parser.add_argument("--tolerance", type=float, default=10.0, help="allowed relative difference, percent")
    parser.add_argument("--concurrent", action="store_true", help="run both trainings at once (one thread each)")
    parser.add_argument("--tabulate", action="store_true", help="do not train; tabulate the runs in --out")
    return parser.parse_args(argv)


def run_step(command: list[str]) -> None:
    """Run one pipeline script from the repository root; a failure stops the benchmark with its command."""
    result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): python {' '.join(command)}")


def make_cohort(root: Path, cases: int, seed: int) -> None:
    """The demo's phantom cohort: phantoms, centroids, straightened 64 x 64 x 32 crops at 2 mm."""
    run_step(["data/make_phantoms.py", "--out", str(root), "--cases", str(cases), "--seed", str(seed),
              "--vertebrae", "T10-L5", "--workers", "2", "--no_progress"])
    run_step(["straighten/location_json_local.py", "--root", str(root), "--quiet"])
    run_step(["straighten/straighten_mask_3d.py", "--root", str(root), "--out", str(root / "straightened"),
              "--crop_size", "64", "64", "32", "--spacing", "2.0", "--workers", "2", "--quiet"])


def train_command(cohort: Path, checkpoints: Path, name: str, args: argparse.Namespace) -> list[str]:
    """train.py with the demo's generator sizes; constant learning rate over every epoch the steps reach."""
    return ["train.py", "--dataroot", str(cohort / "straightened"), "--split_json", str(cohort / "vertebra_data.json"),
            "--name", f"curve_{name}", "--checkpoints_dir", str(checkpoints), "--ngf", "8", "--ndf", "16",
            "--batch_size", str(args.batch_size), "--local_width", "32", "--seed", str(args.seed),
            "--num_threads", "0", "--gpu_ids", "-1", "--max_steps", str(args.steps),
            "--n_epochs", str(args.steps), "--n_epochs_decay", "0", "--val_freq", str(args.val_freq),
            "--save_epoch_freq", "100", "--save_latest_freq", "300", "--no_html", "--no_tensorboard",
            "--no_progress", "--print_freq", "30", *RUNS[name]]


def read_validations(path: Path) -> dict[int, dict[str, float]]:
    """``val_log.csv`` of one run: total iterations -> metric -> value (empty when the run has none yet)."""
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        return {int(row["total_iters"]): {key: float(row[key]) for key in METRICS} for row in csv.DictReader(handle)}


def relative_difference_percent(a: float, b: float) -> float:
    """|a - b| as a percentage of the float32 value ``a``."""
    return 100.0 * abs(a - b) / max(abs(a), 1e-12)


def tabulate(checkpoints: Path, tolerance: float, window_size: int = 5) -> bool:
    """Print the curves and the verdict (last common validation; also the mean of the last ``window_size``);
    True when both runs share a validation and every metric of the last one is within ``tolerance``."""
    curves = {name: read_validations(checkpoints / f"curve_{name}" / "val_log.csv") for name in RUNS}
    steps = sorted(set(curves["fp32"]) | set(curves["bf16"]))
    print("| step | fp32 band L1 | bf16 band L1 | fp32 height error mm | bf16 height error mm |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for step in steps:
        cells = [f"{curves[name][step][key]:.4f}" if step in curves[name] else "-"
                 for key in METRICS for name in RUNS]
        print(f"| {step} | {' | '.join(cells)} |")
    common = sorted(set(curves["fp32"]) & set(curves["bf16"]))
    if not common:
        print("no validation reached by both runs")
        return False
    last = common[-1]
    ok = True
    for key in METRICS:
        fp32, bf16 = curves["fp32"][last][key], curves["bf16"][last][key]
        diff = relative_difference_percent(fp32, bf16)
        ok &= diff <= tolerance
        print(f"step {last}: {key} fp32 {fp32:.4f}, bf16 {bf16:.4f}: {diff:.1f} % apart "
              f"({'within' if diff <= tolerance else 'NOT within'} {tolerance:g} %)")
    window = common[-window_size:]  # one validation on a few vertebrae is noisy: also the mean of the last few
    for key in METRICS:
        fp32, bf16 = (sum(curves[name][step][key] for step in window) / len(window) for name in RUNS)
        print(f"mean of the last {len(window)} common validations (steps {window[0]}-{window[-1]}): {key} "
              f"fp32 {fp32:.4f}, bf16 {bf16:.4f}: {relative_difference_percent(fp32, bf16):.1f} % apart")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoints = args.out / "checkpoints"
    if not args.tabulate:
        cohort = args.cohort or args.out / "cohort"
        if args.cohort is None:
            make_cohort(cohort, args.cases, args.seed)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        commands = [train_command(cohort, checkpoints, name, args) for name in RUNS]
        if args.concurrent:
            processes = [subprocess.Popen([sys.executable, *c], cwd=REPO_ROOT, env=env) for c in commands]
            codes = [p.wait() for p in processes]
        else:
            codes = [subprocess.run([sys.executable, *c], cwd=REPO_ROOT, env=env).returncode for c in commands]
        if any(codes):
            print(f"training failed: {dict(zip(RUNS, codes))}", file=sys.stderr)
            return 1
    return 0 if tabulate(checkpoints, args.tolerance) else 1


if __name__ == "__main__":
    sys.exit(main())
