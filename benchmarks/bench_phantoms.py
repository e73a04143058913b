"""Benchmark the phantom generator: seconds per case and peak memory.

Cases: the default case (``ph000`` of ``make_phantoms.py --seed 0``: T10-L5,
fitted field of view) and a whole-spine case (C1-L5 in a 512x512x800 volume,
0.8x0.8x1.0 mm). Every run is a fresh process (so peak RSS is per run);
generation and writing (NIfTI .gz + truth JSON) are timed separately.

    python benchmarks/bench_phantoms.py [--repeats 5] [--whole_spine_repeats 3] [--skip_whole_spine]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from data.phantoms.case import generate_case, write_case
from data.phantoms.cohort import plan_cohort
from data.phantoms.spec import CaseSpec, parse_vertebra_range

WHOLE_SPINE_SHAPE = (512, 512, 800)
WHOLE_SPINE_SPACING_MM = (0.8, 0.8, 1.0)


def benchmark_specs(seed: int) -> dict[str, CaseSpec]:
    """The benchmarked cases by name."""
    default = plan_cohort(1, seed)[0]
    whole = plan_cohort(1, seed, labels=parse_vertebra_range("C1-L5"), orientation="RAS",
                        spacing_mm=WHOLE_SPINE_SPACING_MM, shape=WHOLE_SPINE_SHAPE)[0]
    return {"default (T10-L5, fitted FOV)": default, "whole spine (C1-L5, 512x512x800)": whole}


def _peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _one_run(spec: CaseSpec) -> dict[str, Any]:
    """Generate and write one case in this (fresh) process; return timings and memory."""
    baseline = _peak_rss_gib()
    start = time.perf_counter()
    case = generate_case(spec)
    generated = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        write_case(case, folder)
    written = time.perf_counter()
    return {
        "generate_s": generated - start,
        "write_s": written - generated,
        "peak_rss_gib": _peak_rss_gib(),
        "baseline_rss_gib": baseline,
        "voxels": float(np.prod(case.ct.shape)),
        "shape": "x".join(str(n) for n in case.ct.shape),
        "spacing": "x".join(f"{s:g}" for s in case.truth["spacing_mm"]),
    }


def run_fresh(spec: CaseSpec) -> dict[str, Any]:
    """``_one_run`` in a new spawned process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_one_run, spec).result()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of the default case (median reported)")
    parser.add_argument("--whole_spine_repeats", type=int, default=3, help="runs of the whole-spine case")
    parser.add_argument("--skip_whole_spine", action="store_true", help="only the default case")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed of the benchmarked cases")
    args = parser.parse_args(argv)

    rows = []
    for name, spec in benchmark_specs(args.seed).items():
        whole = "whole" in name
        if whole and args.skip_whole_spine:
            continue
        runs = [run_fresh(spec) for _ in range(args.whole_spine_repeats if whole else args.repeats)]
        keys = ("generate_s", "write_s", "peak_rss_gib", "baseline_rss_gib")
        median = {key: statistics.median(r[key] for r in runs) for key in keys}
        rows.append((name, runs[0], len(spec.labels), median, len(runs)))

    print(f"machine: {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
          f"Python {platform.python_version()} | numpy {np.__version__}")
    print(f"command: python benchmarks/bench_phantoms.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print()
    print("| case | array shape | spacing mm | Mvoxels | vertebrae | generate s | write s | total s/case "
          "| peak RSS GiB (after imports) | runs |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, first, n_vertebrae, median, n_runs in rows:
        total = median["generate_s"] + median["write_s"]
        print(f"| {name} | {first['shape']} | {first['spacing']} | {first['voxels'] / 1e6:.1f} | {n_vertebrae} | "
              f"{median['generate_s']:.2f} | {median['write_s']:.2f} | {total:.2f} | "
              f"{median['peak_rss_gib']:.2f} ({median['baseline_rss_gib']:.2f}) | {n_runs} |")
    if len(rows) == 2:
        per_voxel = [row[3]["generate_s"] / row[1]["voxels"] for row in rows]
        print(f"\nGeneration time per voxel, whole spine / default: {per_voxel[1] / per_voxel[0]:.2f} (same run). "
              "Times are medians over fresh processes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
