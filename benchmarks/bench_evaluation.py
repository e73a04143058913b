"""Benchmark of the evaluation step: RHLV per vertebra and grading of a 1,000-vertebra table.

Measures, on this machine, in one run:
1. RHLV computation per vertebra (crop already in memory), this project's vectorized
   implementation vs a per-slice loop that re-implements the published algorithm's
   steps (float64 volumes, full-volume ``np.where``, one Python iteration per slice);
2. reading one label crop (``load_mask``);
3. a whole RHLV table run (reading + measuring + CSV) over a folder of crops, per vertebra;
4. SVM grading (5 folds, JSON, text and confusion-matrix PNG) of a 1,000-vertebra table.

Crops: the real straightened labels in ../shared/data/real/upstream-0007 when present
(each vertebra compressed by 25 % along axis 0 to make the "original"), otherwise
box-shaped bodies in 256 x 256 x 64 crops.

    python benchmarks/bench_evaluation.py [--repeats 7] [--vertebrae 1000]
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from data.crops import crop_affine
from data.image_io import load_mask, save_nifti
from data.synthesis_layout import OutputLayout
from evaluation import SVM_grading
from evaluation.rhlv import RHLV_COLUMNS, MeasureOptions, rhlv_for_vertebra
from evaluation.rhlv_table import rhlv_tables, write_table
from tests.synthetic_crops import compress_vertebra

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_LABELS = REAL_DATA / "upstream-0007" / "straightened" / "label"
CROP_SHAPE = (256, 256, 64)


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    return median_times(function, repeats)[0]


def median_times(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this process over ``repeats`` calls (after a warm-up).

    CPU time is less disturbed than wall time when other jobs share the cores.
    """
    function()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def box_crop(label: int) -> np.ndarray:
    """A 256 x 256 x 64 crop with three box-shaped bodies, the target centred."""
    label_map = np.zeros(CROP_SHAPE, dtype=np.int16)
    for offset, value in ((-40, label - 1), (0, label), (40, label + 1)):
        label_map[128 + offset - 14: 128 + offset + 14, 110:146, 14:50] = value
    return label_map


def load_pairs() -> tuple[list[tuple[str, np.ndarray, np.ndarray, int]], str]:
    """(key, synthesized, original, label) crops for the benchmark and a description of the source."""
    pairs = []
    if REAL_LABELS.is_dir():
        for path in sorted(REAL_LABELS.glob("*.nii.gz")):
            key = path.name[: -len(".nii.gz")]
            label = int(key.rsplit("_", 1)[1])
            healthy = load_mask(path).array
            pairs.append((key, healthy, compress_vertebra(healthy, label, 0.75), label))
        return pairs, f"real straightened labels ({len(pairs)} vertebrae of upstream-0007)"
    for label in range(18, 24):
        healthy = box_crop(label)
        pairs.append((f"box_{label}", healthy, compress_vertebra(healthy, label, 0.75), label))
    return pairs, "box-shaped bodies (real data not found)"


def loop_rhlv(original: np.ndarray, synthesized: np.ndarray, label: int, threshold: float = 0.7,
              divisor: int = 5) -> tuple[float, float, float, float]:
    """Per-slice loop following the published algorithm's steps, for timing comparison only."""
    ori = np.zeros(original.shape)
    ori[original.astype(np.float64) == label] = 1
    syn = np.zeros(synthesized.shape)
    syn[synthesized.astype(np.float64) == label] = 1
    z = np.where(ori)[2]
    centre, half = int(np.mean(z)), (int(z.max()) - int(z.min())) // divisor
    ori, syn = ori[:, :, centre - half: centre + half], syn[:, :, centre - half: centre + half]
    kept: dict[str, tuple[list, list]] = {r: ([], []) for r in ("all", "pre", "mid", "post")}
    for index in range(ori.shape[2]):
        o, s = ori[:, :, index], syn[:, :, index]
        if not (o.any() and s.any()):
            continue
        columns = np.where(s)[1]
        first, last = int(columns.min()), int(columns.max())
        b1, b2 = int(first + (last - first) / 3), int(first + 2 * (last - first) / 3)
        centre_s = np.count_nonzero(s[:, int(np.mean(columns))])
        centre_o = np.count_nonzero(o[:, int(np.mean(np.where(o)[1]))])
        for region, part in (("all", slice(None)), ("pre", slice(None, b1)), ("mid", slice(b1, b2)),
                             ("post", slice(b2, None))):
            hs, ho = np.count_nonzero(s[:, part], axis=0), np.count_nonzero(o[:, part], axis=0)
            scale = ho.max() / hs.max() if hs.size and ho.max() > hs.max() else 1.0
            hs = hs * scale
            kept[region][0].extend(hs[hs > centre_s * threshold])
            kept[region][1].extend(ho[ho > centre_o * threshold])
    means = {r: (np.mean(s) if s else 0.0, np.mean(o) if o else 0.0) for r, (s, o) in kept.items()}
    return tuple((ms - mo) / (ms + 1e-6) for ms, mo in means.values())


def grading_table(vertebrae: int, seed: int = 0) -> pd.DataFrame:
    """A 1,000-row RHLV table with VerSe'19-like class proportions and overlapping classes."""
    rng = np.random.default_rng(seed)
    grades = rng.choice(4, size=vertebrae, p=[0.81, 0.10, 0.06, 0.03])
    splits = rng.choice(["train", "val", "test"], size=vertebrae, p=[0.5, 0.25, 0.25])
    centres = np.array([0.03, 0.2, 0.3, 0.5])[grades]
    features = centres[:, None] + rng.normal(0, 0.07, (vertebrae, 3))
    table = pd.DataFrame({"Vertebra": [f"case{i:04d}_20" for i in range(vertebrae)], "Label": grades,
                          "Dataset": splits, "All RHLV": features.mean(axis=1), "Pre RHLV": features[:, 0],
                          "Mid RHLV": features[:, 1], "Post RHLV": features[:, 2],
                          "Relative Height Label": 1 - features.max(axis=1)})
    for column in RHLV_COLUMNS[8:]:
        table[column] = 25.0
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median reported)")
    parser.add_argument("--vertebrae", type=int, default=1000, help="rows of the grading table")
    parser.add_argument("--table_copies", type=int, default=4, help="copies of each crop in the RHLV table run")
    args = parser.parse_args(argv)

    pairs, source = load_pairs()
    ours = np.array([median_times(lambda p=p: rhlv_for_vertebra(p[2], p[1], p[3]), args.repeats) for p in pairs])
    loop = np.array([median_times(lambda p=p: loop_rhlv(p[2], p[1], p[3]), args.repeats) for p in pairs])
    real_read = None
    if REAL_LABELS.is_dir():
        real_path = sorted(REAL_LABELS.glob("*.nii.gz"))[0]
        real_read = median_times(lambda: load_mask(real_path), args.repeats)
    recovered = [rhlv_for_vertebra(p[2], p[1], p[3]).rhlv["all"] for p in pairs]

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        label_dir, fake_dir = Path(folder) / "label", OutputLayout(Path(folder)).label_dir
        affine = crop_affine(1.0, np.zeros(3), pairs[0][1].shape)
        for copy in range(args.table_copies):
            for key, healthy, original, _ in pairs:
                case, label = key.rsplit("_", 1)
                save_nifti(original.astype(np.uint8), affine, label_dir / f"{case}c{copy}_{label}.nii.gz")
                save_nifti(healthy.astype(np.uint8), affine, fake_dir / f"{case}c{copy}_{label}.nii.gz")
        first_label = next(label_dir.glob("*.nii.gz"))
        read = median_times(lambda: load_mask(first_label), args.repeats)
        count = args.table_copies * len(pairs)
        for workers in sorted({1, min(2, os.cpu_count() or 1)}):
            def run_table(workers: int = workers) -> None:
                tables = rhlv_tables(label_dir, fake_dir, None, ("synthesized",), MeasureOptions(),
                                     workers=workers, progress=False)
                write_table(tables.tables["synthesized"], Path(folder) / "rhlv.csv")
            seconds = median_seconds(run_table, max(1, args.repeats // 3))
            rows.append((f"RHLV table run, {workers} worker(s), per vertebra (read + measure + CSV)",
                         seconds / count))

        table_path = Path(folder) / "rhlv_1000.csv"
        grading_table(args.vertebrae).to_csv(table_path, index=False)
        devnull = open(os.devnull, "w", encoding="utf-8")
        stdout, stderr = sys.stdout, sys.stderr
        try:
            sys.stdout = sys.stderr = devnull
            grading = median_seconds(lambda: SVM_grading.main(["--rhlv", str(table_path), "--out",
                                                               str(Path(folder) / "grading")]),
                                     max(1, args.repeats // 2))
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            devnull.close()

    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"command: python benchmarks/bench_evaluation.py --repeats {args.repeats} --vertebrae {args.vertebrae}")
    print(f"crops: {source}; shape {pairs[0][1].shape}; RHLV 'all' recovered for 25 % compression: "
          f"{min(recovered):.3f}-{max(recovered):.3f}")
    print()
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (wall times grow with it; CPU times much less)")
    print()
    print("| measurement | median wall | median CPU |")
    print("| --- | --- | --- |")
    ours_wall, ours_cpu = np.median(ours, axis=0)
    loop_wall, loop_cpu = np.median(loop, axis=0)
    print(f"| RHLV computation per vertebra, this project (vectorized) | {ours_wall * 1e3:.2f} ms | "
          f"{ours_cpu * 1e3:.2f} ms |")
    print(f"| RHLV computation per vertebra, per-slice loop (published algorithm) | {loop_wall * 1e3:.2f} ms | "
          f"{loop_cpu * 1e3:.2f} ms |")
    print(f"| speed-up of the computation (same run) | {loop_wall / ours_wall:.1f}x | {loop_cpu / ours_cpu:.1f}x |")
    if real_read is not None:
        print(f"| reading one upstream label crop (int16 NIfTI, load_mask) | {real_read[0] * 1e3:.1f} ms | "
              f"{real_read[1] * 1e3:.1f} ms |")
    print(f"| reading one label crop written by this project (uint8, load_mask) | {read[0] * 1e3:.1f} ms | "
          f"{read[1] * 1e3:.1f} ms |")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.1f} ms | - |")
    print(f"| SVM grading of a {args.vertebrae}-vertebra table (5 folds + JSON/text/PNG) | {grading:.2f} s | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
