"""Benchmark of the HGAM attention step on CPU: classifier training (seconds per epoch) and
Grad-CAM++ map generation (seconds per vertebra), on a freshly generated phantom cohort.

    python benchmarks/bench_attention.py                      # 4 phantom cases, small + seresnet50
    python benchmarks/bench_attention.py --archs small --repeats 5

Each number is the median of ``--repeats`` runs; ratios are computed from numbers of the same run.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from Attention.cam import generate_maps, parse_cam_options
from Attention.networks import ARCHS
from Attention.training import parse_classifier_options, train_classifier
from data.crops import list_crop_keys
from data.phantoms.cohort import make_cohort
from straighten.pipeline import straighten_root


def build_cohort(root: Path, cases: int, seed: int, crop_size: tuple[int, int, int]) -> tuple[Path, Path]:
    """Phantom cohort at 1 mm, straightened into ``crop_size`` crops; returns (dataroot, split JSON)."""
    _, failures = make_cohort(root, cases, seed, progress=False, spacing_mm=(1.0, 1.0, 1.0), margin_mm=8.0)
    if failures:
        raise RuntimeError(f"phantom generation failed: {failures}")
    results = straighten_root(root, crop_size=crop_size, spacing_mm=1.0)
    failed = [r.error for r in results if r.failed]
    if failed:
        raise RuntimeError(f"straightening failed: {failed}")
    return root / "straightened", root / "vertebra_data.json"


def time_training(dataroot: Path, split_json: Path, checkpoints: Path, arch: str, epochs: int,
                  batch_size: int) -> tuple[float, int]:
    """Median seconds per training epoch over ``epochs`` epochs, and the slices drawn per epoch."""
    opt = parse_classifier_options([
        "--dataroot", str(dataroot), "--split_json", str(split_json), "--name", arch,
        "--checkpoints_dir", str(checkpoints), "--arch", arch, "--gpu_ids", "-1",
        "--n_epochs", str(epochs), "--n_epochs_decay", "0", "--batch_size", str(batch_size),
    ])
    metrics = train_classifier(opt)
    n_train = metrics["n_train"]["healthy"] + metrics["n_train"]["fractured"]
    log = (checkpoints / arch / "classifier_log.csv").read_text(encoding="utf-8").splitlines()[1:]
    seconds = [float(row.split(",")[-1]) for row in log]
    return statistics.median(seconds), n_train * opt.slices_per_vertebra


def time_maps(dataroot: Path, checkpoints: Path, arch: str, out: Path, keys: list[str], repeats: int, png: bool,
              batch_size: int) -> float:
    """Median seconds per vertebra of ``generate_maps`` over ``keys`` (overwriting), over ``repeats`` runs."""
    runs = []
    for _ in range(repeats):
        argv = ["--dataroot", str(dataroot), "--name", arch, "--checkpoints_dir", str(checkpoints),
                "--out", str(out), "--gpu_ids", "-1", "--overwrite", "--batch_size", str(batch_size),
                "--keys", *keys]
        started = time.perf_counter()
        summary = generate_maps(parse_cam_options(argv + ([] if png else ["--no_png"])))
        runs.append((time.perf_counter() - started) / len(summary["written"]))
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=4, help="phantom cases (8 vertebrae each)")
    parser.add_argument("--crop_size", type=int, nargs=3, default=[96, 80, 48], help="straightened crop size (voxels)")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS), help="classifiers to time")
    parser.add_argument("--repeats", type=int, default=3, help="training epochs / map runs per measurement")
    parser.add_argument("--batch_size", type=int, default=16, help="training and Grad-CAM++ batch size")
    parser.add_argument("--map_crops", type=int, default=8, help="crops per map-generation run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="phantom cohort seed")
    opt = parser.parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    with tempfile.TemporaryDirectory(prefix="bench_attention_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        dataroot, split_json = build_cohort(root, opt.cases, opt.seed, tuple(opt.crop_size))
        keys = list_crop_keys(dataroot)
        n_crops = len(keys)
        keys = keys[: opt.map_crops]
        print(f"cohort: {opt.cases} phantom cases, {n_crops} crops of {opt.crop_size} (1 mm), "
              f"built in {time.perf_counter() - started:.1f} s")
        rows = []
        for arch in opt.archs:
            epoch_s, slices = time_training(dataroot, split_json, root / "checkpoints", arch, opt.repeats,
                                            opt.batch_size)
            maps_s = time_maps(dataroot, root / "checkpoints", arch, root / f"heatmap_{arch}", keys, opt.repeats, False,
                               opt.batch_size)
            maps_png_s = time_maps(dataroot, root / "checkpoints", arch, root / f"heatmap_{arch}", keys,
                                   opt.repeats, True, opt.batch_size)
            rows.append((arch, epoch_s, slices, maps_s, maps_png_s))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, CPU only, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"command: python benchmarks/bench_attention.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"median of {opt.repeats} runs\n")
    print("| arch | train s/epoch | slices/epoch | maps s/vertebra (NIfTI) | maps s/vertebra (+PNG) |")
    print("| --- | --- | --- | --- | --- |")
    for arch, epoch_s, slices, maps_s, maps_png_s in rows:
        print(f"| {arch} | {epoch_s:.2f} | {slices} | {maps_s:.3f} | {maps_png_s:.3f} |")
    if len(rows) == 2:
        (_, e0, _, m0, _), (_, e1, _, m1, _) = rows
        print(f"\ntime ratio {rows[0][0]} / {rows[1][0]}: training {e0 / e1:.1f}x, maps {m0 / m1:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
