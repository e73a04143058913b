"""Iterative two-stage synthesis: seconds per vertebra, batched (this project) vs. slice-by-slice (reference).

    python benchmarks/bench_synthesis.py [--crop_size 256 256 64] [--ngf 16] [--repeats 3] [--threads N]

A synthetic sagittal crop (box-shaped bodies with textured CT, attention map) whose target spans
55 sagittal slices, so the central 4/5 gives 44 processed slices, each with an upper and a lower
neighbour above 200 px: 3 x 44 = 132 slice syntheses per vertebra, as for a typical lumbar vertebra.
A random-weight generator (``--ngf``) runs, in the same process and interleaved round-robin so that
load changes hit every variant alike:

- ``slice-by-slice``: per slice, upper, lower, target each with a single-slice generator call
  (132 calls), generator in the default memory format: the published implementation's structure;
- ``batched, chunks of B``: ``models.iterative_synthesis.synthesize_plane`` (three steps, each over
  all slices in chunks of B), channels-last generator, spectral-norm weights computed once per call;
- ``batched, chunks of B, bf16`` (``--bf16``): the same under bfloat16 autocast (CPU).

Prints the machine, the command and a table with the median wall-clock and CPU (process) seconds per
vertebra and the speed-ups over the slice-by-slice loop measured in the same run. On a shared machine
the CPU seconds are the steadier figure (with one thread they are the compute time).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.masking import central_slice_range, slice_offset_ratio, target_slice_extent  # noqa: E402
from models.iterative_synthesis import (  # noqa: E402
    GeneratorRunner, SynthesisSettings, adjacent_labels, synthesize_plane, synthesize_step,
)
from models.networks import HealthiVertGenerator  # noqa: E402

TARGET = 20
BODY_ROWS = 26  # body height (rows); discs of 8 rows between bodies
TARGET_SLICES = 55  # sagittal extent of the target: int(55 * 4 / 5) = 44 processed slices


def benchmark_crop(crop_size: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT HU float32, labels uint8, attention float32) of a crop centred on L1 with T11-L3 around it."""
    rng = np.random.default_rng(seed)
    rows, cols, slices = crop_size
    ct = rng.normal(0.0, 40.0, crop_size).astype(np.float32)
    labels = np.zeros(crop_size, dtype=np.uint8)
    z_start = (slices - TARGET_SLICES) // 2
    for label in range(18, 23):
        top = rows // 2 - BODY_ROWS // 2 + (label - TARGET) * (BODY_ROWS + 8)
        body = (slice(max(top, 0), max(top + BODY_ROWS, 0)), slice(cols // 2 - 22, cols // 2 + 22),
                slice(z_start, z_start + TARGET_SLICES))
        labels[body] = label
        ct[body] += 250.0
    cam = np.clip(rng.normal(0.3, 0.1, crop_size), 0.0, 1.0).astype(np.float32)
    return ct, labels, cam


def slice_by_slice(runner: GeneratorRunner, ct_hu: np.ndarray, label_map: np.ndarray, cam: np.ndarray,
                   settings: SynthesisSettings) -> int:
    """The reference's loop: per sagittal slice, upper, lower and target one generator call each.

    Uses the same masking and composition as the batched version; returns the slices synthesized.
    """
    slab_ct, slab_labels, slab_cam = (np.moveaxis(v, 2, 0) for v in (ct_hu, label_map, cam))
    first, last = target_slice_extent(slab_labels, TARGET, settings.min_component_px)
    start, stop = central_slice_range(first, last)
    upper, lower = adjacent_labels(np.unique(label_map), TARGET)
    canvas = label_map.shape[1]
    done = 0
    for z in range(start, stop + 1):
        ct = slab_ct[z:z + 1].copy()
        labels = slab_labels[z:z + 1].copy()
        probability = (labels == TARGET).astype(np.float32)
        offset = np.array([slice_offset_ratio(z, first, last)], dtype=np.float32)
        for label in (upper, lower):
            if label is not None and (slab_labels[z] == label).sum() > settings.neighbour_min_px:
                synthesize_step(runner, ct, labels, probability, slab_cam[z:z + 1], offset, label, False, settings,
                                canvas)
        done += int(synthesize_step(runner, ct, labels, probability, slab_cam[z:z + 1], offset, TARGET, True, settings,
                                    canvas)[0])
    return done


def machine_description() -> str:
    """CPU model, cores, torch threads and load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {load}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--crop_size", type=int, nargs=3, default=[256, 256, 64], help="crop shape (S-I, A-P, R-L)")
    parser.add_argument("--ngf", type=int, default=16, help="generator base width")
    parser.add_argument("--mask_height", type=int, default=40, help="band height in rows")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[4, 0],
                        help="slices per generator call of the batched variants (0: all slices at once)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("--bf16", action="store_true", help="also time the batched variant under bfloat16 autocast")
    parser.add_argument("--skip_loop", action="store_true", help="do not time the slice-by-slice loop")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    crop_size = tuple(args.crop_size)
    ct, labels, cam = benchmark_crop(crop_size)
    settings = SynthesisSettings(args.mask_height, (-300.0, 800.0))
    plain = HealthiVertGenerator(args.ngf, args.mask_height).eval()
    tuned = HealthiVertGenerator(args.ngf, args.mask_height).eval()
    tuned.load_state_dict(plain.state_dict())
    tuned.to(memory_format=torch.channels_last)

    variants: dict[str, Callable[[], object]] = {}
    if not args.skip_loop:
        loop_runner = GeneratorRunner(plain, batch_size=1)
        variants["slice-by-slice (132 single-slice calls)"] = lambda: slice_by_slice(loop_runner, ct, labels, cam,
                                                                                      settings)
    for batch_size in args.batch_sizes:
        chunk = "all slices" if batch_size == 0 else f"chunks of {batch_size}"
        dtypes = [None, torch.bfloat16] if args.bf16 else [None]
        for dtype in dtypes:
            runner = GeneratorRunner(tuned, batch_size=batch_size, amp_dtype=dtype)
            name = f"batched, {chunk}" + (", bf16" if dtype is not None else "")
            variants[name] = (lambda r=runner: synthesize_plane(r, ct, labels, cam, TARGET, "sagittal", settings))

    processed = synthesize_plane(GeneratorRunner(tuned), ct, labels, cam, TARGET, "sagittal", settings)
    steps = ", ".join(f"{s.role} {len(s.slices)}" for s in processed.steps)
    print(f"machine: {machine_description()}")
    print(f"command: python benchmarks/bench_synthesis.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"crop {crop_size}, ngf {args.ngf}, band {args.mask_height} rows; slices per step: {steps}")
    warm_up(plain, ct.shape[:2])
    warm_up(tuned, ct.shape[:2])
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)
    baseline = statistics.median(next(iter(wall.values())))
    cpu_baseline = statistics.median(next(iter(cpu.values())))
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("\n| variant | wall s / vertebra (median) | wall runs | CPU s / vertebra | speed-up (wall) | speed-up (CPU) |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name in wall:
        median, cpu_median = statistics.median(wall[name]), statistics.median(cpu[name])
        runs = " ".join(f"{v:.1f}" for v in wall[name])
        print(f"| {name} | {median:.1f} | {runs} | {cpu_median:.1f} | {baseline / median:.2f}x | "
              f"{cpu_baseline / cpu_median:.2f}x |")
    return 0


def warm_up(generator: HealthiVertGenerator, image_shape: tuple[int, int]) -> None:
    """One 2-slice generator call (allocator, oneDNN primitive creation) before timing."""
    zeros = np.zeros((2,) + tuple(image_shape), dtype=np.float32)
    GeneratorRunner(generator, batch_size=0)(zeros, np.zeros(2, dtype=np.float32), zeros, zeros, 8)


if __name__ == "__main__":
    sys.exit(main())
