"""Benchmark of straightening: seconds per case and peak memory (one core).

Cases:
- ``phantom8``: a 1 mm phantom of 8 vertebrae (T10-L5), made with the phantom generator;
- ``sub-verse005``: the real VerSe'19 scan (5 vertebrae, PIR, 1 mm) from ../shared/data/real, if present;
- ``big`` (``--big``): a whole-spine phantom CT of 512 x 512 x 800 voxels (C3-L5), for peak memory.

Each timed run is a fresh process with one BLAS/OpenMP thread that straightens the case (read,
centroids, de-pedicle, resample, write the default 256 x 256 x 64 crops) and reports the wall time
and CPU time of that call (interpreter start and imports excluded), its peak RSS and the RSS
before the call. On a shared machine the CPU time is the stable number; wall time includes waiting.

Example:  python benchmarks/bench_straighten.py --repeats 5 [--big]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = REPO_ROOT.parent / "shared" / "data" / "real"
REFERENCE_SECONDS = {"sub-verse005": 4.4}  # published implementation on this machine (from the issue)

CHILD = r"""
import json, resource, sys, time
from data.image_io import find_case_files
from straighten.pipeline import straighten_case
def rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
before = rss_mb()
start, cpu_start = time.perf_counter(), time.process_time()
result = straighten_case(find_case_files({case_dir!r}), {out!r})
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak, "rss_before_mb": before,
                  "crops": len(result.written)}}))
"""


def run_once(case_dir: Path, out: Path) -> dict:
    """Straighten one case in a fresh single-threaded process; return its timing and memory."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = CHILD.format(case_dir=str(case_dir), out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case_dir}: benchmark run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_phantom(root: Path, case: str, labels: tuple[int, ...], spacing: tuple[float, float, float],
                 shape: tuple[int, int, int] | None = None) -> Path:
    """Write one phantom case under ``root/raw/<case>/`` and return its folder."""
    from data.phantoms.case import generate_case, write_case
    from data.phantoms.spec import CaseSpec

    (root / "raw").mkdir(parents=True, exist_ok=True)
    write_case(generate_case(CaseSpec(case=case, seed=1, labels=labels, orientation="RAS", spacing_mm=spacing,
                                      shape=shape)), root)
    return root / "raw" / case


def link_real_case(root: Path, case: str) -> Path | None:
    """``root/raw/<case>/`` with links to the real VerSe files, or None when they are absent."""
    files = sorted((REAL_DIR / "verse19").glob(f"{case}_*.nii.gz"))
    if not files:
        return None
    folder = root / "raw" / case
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported; default 5)")
    parser.add_argument("--big", action="store_true",
                        help="also straighten a 512 x 512 x 800 whole-spine phantom (slow)")
    parser.add_argument("--work_dir", type=Path, default=None, help="scratch folder (default: a temporary folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    args = build_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_straighten_")) if args.work_dir is None else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, Path, int]] = [
        ("phantom8 (T10-L5, 1 mm)", make_phantom(work, "phantom8", tuple(range(17, 25)), (1.0, 1.0, 1.0)),
         args.repeats),
    ]
    real = link_real_case(work, "sub-verse005")
    if real is not None:
        cases.append(("sub-verse005", real, args.repeats))
    if args.big:
        big = make_phantom(work, "big", tuple(range(3, 25)), (0.7, 0.7, 1.0), shape=(512, 512, 800))
        cases.append(("big 512x512x800 (C3-L5)", big, 1))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; one thread")
    print("command: python benchmarks/bench_straighten.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print()
    print("| case | crops | median wall s (runs) | median CPU s | peak RSS MB | RSS before MB | peak - before MB "
          "| reference 4.4 s / ours |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, folder, repeats in cases:
        runs = [run_once(folder, work / "out") for _ in range(max(1, repeats))]
        seconds = [r["seconds"] for r in runs]
        median = statistics.median(seconds)
        peak = max(r["peak_rss_mb"] for r in runs)
        before = min(r["rss_before_mb"] for r in runs)
        cpu = statistics.median(r["cpu_seconds"] for r in runs)
        reference = REFERENCE_SECONDS.get(folder.name)
        ratio = f"{reference / median:.1f}x (wall), {reference / cpu:.1f}x (CPU)" if reference else "-"
        print(f"| {name} | {runs[0]['crops']} | {median:.2f} ({len(runs)}) | {cpu:.2f} | {peak:.0f} | "
              f"{before:.0f} | {peak - before:.0f} | {ratio} |")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
