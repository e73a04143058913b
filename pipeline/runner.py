"""Running one demo step: its script as a subprocess from the repository root, its output in a log,
its wall and CPU seconds, and which of its outputs exist (``pipeline.run.StepResult``); and running
every step of the pipeline in order (``run_pipeline``: demo.py and benchmarks/phantom_accuracy.py)."""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.run import DemoConfig, DemoPaths, PipelineRun, Step, StepResult
from pipeline.steps import build_steps
from util.fileio import prepare_output_dir

REPO_ROOT = Path(__file__).resolve().parents[1]  # the step scripts' paths are relative to it
DEMO_ENTRIES = ("raw", "straightened", "heatmap", "checkpoints", "results", "logs", "report",
                "vertebra_data.json", "demo_summary.json")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
HEARTBEAT_S = 30.0  # a step running longer than this prints its latest progress line this often


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def step_environment(threads: int | None) -> dict[str, str]:
    """Environment of the step subprocesses: ``threads`` > 0 caps the CPU threads of PyTorch/OpenMP/MKL."""
    env = dict(os.environ)
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def last_log_line(path: str | Path) -> str:
    """The latest line of a log, progress-bar updates (carriage returns) included; '' when empty."""
    tail = log_tail(path, 1)
    return tail.splitlines()[-1].strip() if tail else ""


def skipped_result(step: Step) -> StepResult | None:
    """The result of a step whose inputs are missing (an earlier step failed), naming the first; else ``None``."""
    missing = [path for path in step.inputs if not path.exists()]
    if not missing:
        return None
    return StepResult(step.name, step.display(), step.artefact, log=f"skipped: {missing[0]} is missing")


def run_step(step: Step, log_dir: Path, index: int, verbose: bool = False, threads: int | None = None,
             heartbeat: Callable[[str], None] | None = None) -> StepResult:
    """Run one step from the repository root; stdout and stderr go to ``log_dir/<NN>_<name>.log``
    (and to the terminal with ``verbose``). Without ``verbose``, ``heartbeat`` receives every
    ``HEARTBEAT_S`` seconds the elapsed time and the log's latest line (the step's own progress).
    Returns its exit status and wall/CPU seconds."""
    log = log_dir / f"{index:02d}_{step.name.replace(' ', '_').replace('(', '').replace(')', '')}.log"
    command = step.command()
    result = StepResult(step.name, step.display(), step.artefact, log=str(log))
    cpu_before, start = _children_cpu_s(), time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        if verbose:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, encoding="utf-8", errors="replace", env=step_environment(threads))
            for line in process.stdout:  # type: ignore[union-attr]
                handle.write(line)
                sys.stdout.write(f"    {line}")
            returncode = process.wait()
        else:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       env=step_environment(threads))
            next_beat = start + HEARTBEAT_S
            while True:
                try:
                    returncode = process.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if heartbeat is not None and time.perf_counter() >= next_beat:
                        heartbeat(f"{time.perf_counter() - start:5.0f} s  {last_log_line(log)[:100]}")
                        next_beat += HEARTBEAT_S
    result.returncode = returncode
    result.outputs_present = sum(path.exists() for path in step.outputs)
    result.outputs_expected = len(step.outputs)
    result.wall_s = time.perf_counter() - start
    result.cpu_s = _children_cpu_s() - cpu_before
    return result


def log_tail(path: str | Path, lines: int = 12) -> str:
    """The last ``lines`` lines of a log (progress-bar carriage returns folded)."""
    # newline="" and split("\n"): universal newlines and splitlines() would break at a progress bar's \r
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        text = handle.read()
    kept = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n") if line.strip()]
    return "\n".join(kept[-lines:])


def prepare_out_dir(root: Path, overwrite: bool) -> None:
    """Create ``root``; refuse a folder holding an earlier run unless ``overwrite`` (which removes only
    the demo's own entries)."""
    prepare_output_dir(root, "demo output folder (--out)")
    existing = [root / name for name in DEMO_ENTRIES if (root / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root}: holds an earlier demo run ({existing[0].name}, ...); "
                              "use --overwrite or another --out")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def gpu_ids_for(device: str) -> str:
    """``--gpu_ids`` value of the pipeline scripts for ``--device``."""
    if device == "cpu":
        return "-1"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return "0" if torch.cuda.is_available() else "-1"


def run_pipeline(config: DemoConfig, root: Path, gpu_ids: str = "-1", overwrite: bool = False,
                 verbose: bool = False, echo: bool = True, threads: int | None = 1) -> PipelineRun:
    """Run every step in order into ``root``; a step whose inputs are missing (an earlier step failed)
    is skipped, with the reason in its log line."""
    paths = DemoPaths(root.resolve())
    prepare_out_dir(paths.root, overwrite)
    paths.logs.mkdir(parents=True, exist_ok=True)
    run = PipelineRun(config, paths, gpu_ids)
    steps = build_steps(config, paths, gpu_ids)
    for index, step in enumerate(steps, start=1):
        if echo:
            print(f"[{index:2d}/{len(steps)}] {step.name:<26} ", end="", flush=True)
        result = skipped_result(step)
        if result is not None:
            run.steps.append(result)
            if echo:
                print(f"skipped      ({result.log})", flush=True)
            continue
        beats: list[str] = []

        # heartbeat is only called by run_step within this iteration, so ``beats`` is this step's list
        def heartbeat(line: str) -> None:
            print(("\n" if not beats else "") + f"      ... {line}", flush=True)  # noqa: B023
            beats.append(line)  # noqa: B023

        result = run_step(step, paths.logs, index, verbose, threads, heartbeat if echo else None)
        run.steps.append(result)
        if echo:
            if beats:  # the heartbeat lines broke the step's line: name the step again
                print(f"[{index:2d}/{len(steps)}] {step.name:<26} ", end="")
            print(f"{result.status:<12} {result.wall_s:7.1f} s  -> {step.artefact}", flush=True)
            if result.status != "ok":
                print(f"    log: {result.log}\n"
                      + "\n".join(f"    | {line}" for line in log_tail(result.log).splitlines()))
    return run
