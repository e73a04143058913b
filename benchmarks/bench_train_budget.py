"""Training speed of several checkouts side by side, to carry the phantom accuracy benchmark's training
budget over to faster code (benchmarks/README.md, 'Phantom accuracy').

    python benchmarks/bench_train_budget.py --cohort DIR --checkouts OLD NEW [--prepare]
        [--epochs 36] [--warmup 48] [--window 128] [--iterations 3192]

``--cohort`` holds the benchmark's first five steps (phantoms .. attention maps) of
``benchmarks/phantom_accuracy.py`` (``--prepare`` runs them there with this checkout's code). Each
checkout runs its own ``train.py`` with its own pipeline training step (the benchmark's settings:
ngf 8, ndf 16, batch 4, one thread; ``--epochs`` epochs, no decay) on that cohort, all at once so that
every run sees the same load. The process CPU seconds (utime + stime, Linux ``/proc``) and wall
seconds are sampled against the loss log's ``total_iters``; the rates per iteration are taken in
windows of ``--window`` iterations after ``--warmup``. Printed: each window, the medians, and the
iterations (and ``phantom_accuracy.py --gan_epochs``) that each checkout fits in the first
checkout's budget of ``--iterations`` iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

Sample = tuple[int, float, float]  # (total_iters, wall s, process CPU s) since the run started

# prints one checkout's training step arguments as JSON (run with that checkout first on sys.path);
# older checkouts kept build_steps and DemoPaths in demo.py
STEP_ARGS = """
import json, sys
from dataclasses import replace
from pathlib import Path
from benchmarks.phantom_accuracy import BENCHMARK
try:
    from pipeline.run import DemoPaths
    from pipeline.steps import build_steps
except ImportError:
    from demo import DemoPaths, build_steps
config = replace(BENCHMARK, gan_epochs=int(sys.argv[2]), gan_epochs_decay=0)
step = next(s for s in build_steps(config, DemoPaths(Path(sys.argv[1])), "-1") if s.name == "training")
print(json.dumps(step.args))
"""


class Rates(NamedTuple):
    """Seconds per iteration of one window."""

    iterations: int
    cpu_s: float
    wall_s: float


def window_rates(samples: list[Sample], warmup: int, window: int) -> list[Rates]:
    """CPU and wall seconds per iteration in consecutive windows of ``window`` iterations from
    ``warmup`` on; a window starts and ends at the first sample at or past its boundary."""
    rates = []
    start = warmup
    while samples and samples[-1][0] >= start + window:
        first = next(s for s in samples if s[0] >= start)
        last = next(s for s in samples if s[0] >= start + window)
        count = last[0] - first[0]
        rates.append(Rates(count, (last[2] - first[2]) / count, (last[1] - first[1]) / count))
        start += window
    return rates


def iterations_in_budget(iterations: int, budget_s_per_iteration: float, s_per_iteration: float) -> int:
    """Iterations (nearest whole number) that take as long as ``iterations`` x ``budget_s_per_iteration``
    seconds at ``s_per_iteration``."""
    return round(iterations * budget_s_per_iteration / s_per_iteration)


def training_iterations(gan_epochs: int, iterations_per_epoch: int) -> int:
    """Iterations of ``phantom_accuracy.py --gan_epochs N``: N epochs plus N // 3 decay epochs."""
    return (gan_epochs + gan_epochs // 3) * iterations_per_epoch


def gan_epochs_for(iterations: int, iterations_per_epoch: int) -> int:
    """The ``phantom_accuracy.py --gan_epochs`` whose training iterations are nearest to ``iterations``
    (the smaller one on a tie)."""
    upper = 1
    while training_iterations(upper, iterations_per_epoch) < iterations:
        upper += 1
    return min((upper - 1, upper), key=lambda e: abs(training_iterations(e, iterations_per_epoch) - iterations))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def last_total_iters(loss_log: Path) -> int:
    """``total_iters`` of the loss log's last row (0 before the first)."""
    try:
        rows = loss_log.read_text(encoding="utf-8").strip().splitlines()
        header = rows[0].split(",")
        return int(rows[-1].split(",")[header.index("total_iters")]) if len(rows) > 1 else 0
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def training_command(checkout: Path, cohort: Path, epochs: int, checkpoints: Path) -> list[str]:
    """The checkout's benchmark training step for ``epochs`` epochs, its checkpoints in ``checkpoints``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    args = json.loads(subprocess.run([sys.executable, "-c", STEP_ARGS, str(cohort), str(epochs)], cwd=checkout,
                                     env=env, check=True, capture_output=True, text=True, encoding="utf-8").stdout)
    args[args.index("--checkpoints_dir") + 1] = str(checkpoints)
    args[args.index("--save_epoch_freq") + 1] = str(10 ** 6)  # no checkpoint writes inside the windows
    return [sys.executable, "train.py", *args]


def prepare_cohort(cohort: Path) -> None:
    """The benchmark's first five steps (phantoms .. attention maps) into ``cohort``, with this checkout."""
    from benchmarks.phantom_accuracy import BENCHMARK
    from pipeline.run import DemoPaths
    from pipeline.runner import prepare_out_dir, run_step
    from pipeline.steps import build_steps

    paths = DemoPaths(cohort.resolve())
    prepare_out_dir(paths.root, overwrite=False)
    paths.logs.mkdir(parents=True, exist_ok=True)
    for index, step in enumerate(build_steps(BENCHMARK, paths, "-1")[:5], start=1):
        result = run_step(step, paths.logs, index, threads=1)
        print(f"{step.name}: {result.status}, {result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU", flush=True)
        if result.status != "ok":
            raise RuntimeError(f"{step.name} failed; see {result.log}")


def run_side_by_side(commands: dict[str, tuple[Path, list[str], Path]]) -> dict[str, list[Sample]]:
    """Start every command at once (one thread each); sample each until all have finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    processes, samples = {}, {}
    started = time.perf_counter()
    for name, (checkout, command, _) in commands.items():
        env_run = {**env, "PYTHONPATH": str(checkout)}
        processes[name] = subprocess.Popen(command, cwd=checkout, env=env_run, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        samples[name] = []
    while any(p.poll() is None for p in processes.values()):
        for name, process in processes.items():
            if process.poll() is not None:
                continue
            iters = last_total_iters(commands[name][2])
            if iters and (not samples[name] or iters != samples[name][-1][0]):
                try:
                    samples[name].append((iters, time.perf_counter() - started, process_cpu_s(process.pid)))
                except FileNotFoundError:  # it ended between poll and read
                    pass
        time.sleep(0.1)
    failed = [name for name, p in processes.items() if p.returncode != 0]
    if failed:
        raise RuntimeError(f"train.py failed for {', '.join(failed)}")
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True, help="folder with the benchmark's first five steps")
    parser.add_argument("--checkouts", type=Path, nargs="+", required=True,
                        help="repository checkouts to time; the first one sets the budget")
    parser.add_argument("--prepare", action="store_true", help="first run the five steps into --cohort")
    parser.add_argument("--epochs", type=int, default=36, help="training epochs per run (default: 36)")
    parser.add_argument("--warmup", type=int, default=48, help="iterations left out at the start (default: 48)")
    parser.add_argument("--window", type=int, default=128, help="iterations per timed window (default: 128)")
    parser.add_argument("--iterations", type=int, default=3192,
                        help="the first checkout's training iterations, i.e. the budget (default: 3192)")
    parser.add_argument("--iterations_per_epoch", type=int, default=12,
                        help="training iterations per epoch of the cohort, for --gan_epochs (default: 12)")
    parser.add_argument("--work", type=Path, default=Path("results/bench_train_budget"),
                        help="checkpoints and loss logs of the timed runs (default: results/bench_train_budget)")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare_cohort(args.cohort)
    if not (args.cohort / "straightened" / "label").is_dir():
        print(f"error: {args.cohort}: no straightened crops (run with --prepare)", file=sys.stderr)
        return 2
    commands = {}
    for index, checkout in enumerate(args.checkouts):
        name = f"{index}_{checkout.resolve().name}"
        command = training_command(checkout.resolve(), args.cohort.resolve(), args.epochs,
                                   (args.work / name).resolve())
        loss_log = (args.work / name).resolve() / command[command.index("--name") + 1] / "loss_log.csv"
        loss_log.unlink(missing_ok=True)
        commands[name] = (checkout.resolve(), command, loss_log)
    samples = run_side_by_side(commands)
    medians = {}
    for name, rows in samples.items():
        rates = window_rates(rows, args.warmup, args.window)
        if not rates:
            print(f"error: {name}: fewer than --warmup + --window iterations", file=sys.stderr)
            return 1
        medians[name] = (statistics.median(r.cpu_s for r in rates), statistics.median(r.wall_s for r in rates))
        print(f"{name}: CPU s/iteration {', '.join(f'{r.cpu_s:.3f}' for r in rates)} (median {medians[name][0]:.3f});"
              f" wall s/iteration {', '.join(f'{r.wall_s:.2f}' for r in rates)} (median {medians[name][1]:.2f})")
    budget_name = next(iter(medians))
    budget_cpu = medians[budget_name][0]
    print(f"budget: {args.iterations} iterations x {budget_cpu:.3f} CPU s = {args.iterations * budget_cpu:.0f} CPU s")
    for name, (cpu, _) in medians.items():
        fitted = iterations_in_budget(args.iterations, budget_cpu, cpu)
        epochs = gan_epochs_for(fitted, args.iterations_per_epoch)
        print(f"{name}: ratio {budget_cpu / cpu:.3f}, {fitted} iterations in the budget: --gan_epochs {epochs} "
              f"({training_iterations(epochs, args.iterations_per_epoch)} iterations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
