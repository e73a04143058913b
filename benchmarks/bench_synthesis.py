"""Iterative two-stage synthesis: seconds per vertebra, batched (this project) vs. slice-by-slice (reference),
float32 and bfloat16, each against its convolution yardstick measured in the same run.

    python benchmarks/bench_synthesis.py [--crop_size 256 256 64] [--ngf 16] [--repeats 3] [--threads N] [--bf16]

A synthetic sagittal crop (box-shaped bodies with textured CT, attention map) whose target spans
55 sagittal slices (``--target_slices``), so the central 4/5 gives 44 processed slices, each with an
upper and a lower neighbour above 200 px: 3 x 44 = 132 slice syntheses per vertebra, as for a typical
lumbar vertebra.
A random-weight generator (``--ngf``) runs, in the same process and interleaved round-robin so that
load changes hit every variant alike:

- ``slice-by-slice``: per slice, upper, lower, target each with a single-slice generator call
  (132 calls), generator in the default memory format: the published implementation's structure;
- ``batched, chunks of B``: ``models.synthesis.plane.synthesize_plane`` (three steps, each over
  all slices in chunks of B), channels-last generator, spectral-norm weights computed once per call;
- ``batched, chunks of B, bf16`` (``--bf16``): the same under bfloat16 autocast (CPU);
- ``batched, chunks of B, compiled`` (``--compile``): the same float32 generator compiled with ``torch.compile``
  (``models.compilation``); its first run (compilation + one synthesis) is timed apart as the compile time.

Before every timed run of a variant its type's convolution yardstick runs (``benchmarks/yardsticks.py``,
float32 or bfloat16 autocast): each variant's GFLOP/s (generator FLOPs of one slice, counted with
``torch.utils.flop_counter``, times the slices synthesized) is given as a percentage of it. With
``--bf16`` the bfloat16 result is compared with the float32 one on the voxels either changed: CT in
HU (median, p99) and identical labels; with ``--compile`` the compiled result likewise.

Prints the machine (CPU model, AMX / AVX-512 BF16), the command and a table with the median wall-clock
and CPU (process) seconds per vertebra, the percentages of the yardsticks and the speed-ups over the
slice-by-slice loop measured in the same run. On a shared machine the CPU seconds are the steadier
figure (with one thread they are the compute time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.yardsticks import (
    DTYPES,
    abs_difference_stats,
    conv_yardstick,
    count_flops,
    operator_profile,
    percent_of_yardstick,
    time_interleaved,
)
from data.masking import central_slice_range, slice_offset_ratio, target_slice_extent
from models.compilation import compile_network
from models.networks import HealthiVertGenerator
from models.synthesis.plane import PlaneSynthesis, adjacent_labels, synthesize_plane, synthesize_step
from models.synthesis.runner import GeneratorRunner
from models.synthesis.settings import SynthesisSettings
from util.cpu_features import bf16_summary

TARGET = 20
BODY_ROWS = 26  # body height (rows); discs of 8 rows between bodies
TARGET_SLICES = 55  # sagittal extent of the target: int(55 * 4 / 5) = 44 processed slices
TARGET_PERCENT = {"fp32": 65.0, "bf16": 50.0}  # of the type's yardstick
TARGET_LABEL_AGREEMENT = 99.5  # % of changed voxels, bf16 vs fp32
TARGET_MEDIAN_HU = 1.0


def benchmark_crop(crop_size: tuple[int, int, int], seed: int = 0,
                   target_slices: int = TARGET_SLICES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT HU float32, labels uint8, attention float32) of a crop centred on L1 with T11-L3 around it."""
    rng = np.random.default_rng(seed)
    rows, cols, slices = crop_size
    ct = rng.normal(0.0, 40.0, crop_size).astype(np.float32)
    labels = np.zeros(crop_size, dtype=np.uint8)
    z_start = (slices - target_slices) // 2
    for label in range(18, 23):
        top = rows // 2 - BODY_ROWS // 2 + (label - TARGET) * (BODY_ROWS + 8)
        body = (slice(max(top, 0), max(top + BODY_ROWS, 0)), slice(cols // 2 - 22, cols // 2 + 22),
                slice(z_start, z_start + target_slices))
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
    """CPU model and bfloat16 capabilities, cores, torch threads and load average."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{bf16_summary()}; {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, load average {load}")


def slice_flops(generator: HealthiVertGenerator, image_shape: tuple[int, int]) -> float:
    """Generator FLOPs of one slice (batch-1 forward, float32)."""
    zeros = torch.zeros((1, 1) + tuple(image_shape))

    def forward() -> None:
        with torch.no_grad():
            generator(zeros, zeros, zeros, zeros, 8.0)

    return count_flops(forward)


def changed_voxel_difference(reference: PlaneSynthesis, other: PlaneSynthesis, ct: np.ndarray,
                             labels: np.ndarray) -> dict[str, float]:
    """``other`` vs ``reference`` on the voxels either changed in the input crop (``ct``, ``labels``):
    |CT difference| in HU (median, p99, max) and the percentage of identical labels (also over the crop)."""
    changed = ((reference.ct_hu != ct) | (other.ct_hu != ct) | (reference.label_map != labels)
               | (other.label_map != labels))
    stats = abs_difference_stats(reference.ct_hu[changed], other.ct_hu[changed])
    same = reference.label_map == other.label_map
    return {"changed_voxels": int(changed.sum()), "ct_hu_median": stats["median"], "ct_hu_p99": stats["p99"],
            "ct_hu_max": stats["max"], "label_agreement_changed_percent": 100.0 * float(same[changed].mean()),
            "label_agreement_crop_percent": 100.0 * float(same.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--crop_size", type=int, nargs=3, default=[256, 256, 64], help="crop shape (S-I, A-P, R-L)")
    parser.add_argument("--target_slices", type=int, default=TARGET_SLICES,
                        help="sagittal extent of the target vertebra (slices; 4/5 of them are processed)")
    parser.add_argument("--ngf", type=int, default=16, help="generator base width")
    parser.add_argument("--mask_height", type=int, default=40, help="band height in rows")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[4, 0],
                        help="slices per generator call of the batched variants (0: all slices at once)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("--bf16", action="store_true", help="also time the batched variants under bfloat16 autocast")
    parser.add_argument("--skip_loop", action="store_true", help="do not time the slice-by-slice loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time the float32 batched variants with the generator compiled by torch.compile")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, run each batched variant once under torch.profiler and print its N "
                             "operators with the most self CPU time")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not 0 < args.target_slices <= args.crop_size[2]:
        parser.error(f"--target_slices {args.target_slices} must be in 1..{args.crop_size[2]} (crop slices)")
    torch.manual_seed(0)
    crop_size = tuple(args.crop_size)
    ct, labels, cam = benchmark_crop(crop_size, target_slices=args.target_slices)
    settings = SynthesisSettings(args.mask_height, (-300.0, 800.0))
    plain = HealthiVertGenerator(args.ngf, args.mask_height).eval()
    tuned = HealthiVertGenerator(args.ngf, args.mask_height).eval()
    tuned.load_state_dict(plain.state_dict())
    tuned.to(memory_format=torch.channels_last)

    # name -> (type name, run); every run returns the PlaneSynthesis or the number of slices synthesized
    variants: dict[str, tuple[str, Callable[[], object]]] = {}
    if not args.skip_loop:
        loop_runner = GeneratorRunner(plain, batch_size=1)
        variants["slice-by-slice (single-slice calls)"] = (
            "fp32", lambda: slice_by_slice(loop_runner, ct, labels, cam, settings))
    for batch_size in args.batch_sizes:
        chunk = "all slices" if batch_size == 0 else f"chunks of {batch_size}"
        for dtype_name in ["fp32", "bf16"] if args.bf16 else ["fp32"]:
            runner = GeneratorRunner(tuned, batch_size=batch_size, amp_dtype=DTYPES[dtype_name])
            name = f"batched, {chunk}" + (", bf16" if dtype_name == "bf16" else "")
            variants[name] = (dtype_name,
                              lambda r=runner: synthesize_plane(r, ct, labels, cam, TARGET, "sagittal", settings))
        if args.compile:
            runner = GeneratorRunner(compiled_generator(tuned), batch_size=batch_size)
            variants[f"batched, {chunk}, compiled"] = (
                "fp32", lambda r=runner: synthesize_plane(r, ct, labels, cam, TARGET, "sagittal", settings))

    processed = synthesize_plane(GeneratorRunner(tuned), ct, labels, cam, TARGET, "sagittal", settings)
    slices_per_vertebra = sum(len(step.slices) for step in processed.steps)
    flops = slices_per_vertebra * slice_flops(tuned, ct.shape[:2])
    steps = ", ".join(f"{s.role} {len(s.slices)}" for s in processed.steps)
    print(f"machine: {machine_description()}")
    print(f"command: python benchmarks/bench_synthesis.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"crop {crop_size}, ngf {args.ngf}, band {args.mask_height} rows; slices per step: {steps}; "
          f"generator {flops / 1e9:.0f} GFLOP per vertebra")
    yardsticks = {name: conv_yardstick(DTYPES[name]) for name in {dtype for dtype, _ in variants.values()}}
    warm_up(plain, ct.shape[:2])
    warm_up(tuned, ct.shape[:2])
    compile_seconds = {}
    for name, (_, run) in variants.items():  # compilation + one run, for the chunk sizes the timed runs use
        if name.endswith(", compiled"):
            start = time.perf_counter()
            run()
            compile_seconds[name] = time.perf_counter() - start
    results: dict[str, object] = {}

    def keep(name: str, run: Callable[[], object]) -> Callable[[], None]:
        def timed() -> None:
            results[name] = run()
        return timed

    times = {name: time_interleaved(keep(name, run), yardsticks[dtype][0], 1, warm_up=False)
             for name, (dtype, run) in variants.items()}
    for _ in range(args.repeats - 1):  # round-robin, so that load changes hit every variant alike
        for name, (dtype, run) in variants.items():
            more = time_interleaved(keep(name, run), yardsticks[dtype][0], 1, warm_up=False)
            for key in vars(more):
                getattr(times[name], key).extend(getattr(more, key))
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    baseline = statistics.median(next(iter(times.values())).case_wall)
    cpu_baseline = statistics.median(next(iter(times.values())).case_cpu)
    print("\n| variant | wall s / vertebra (median) | wall runs | CPU s / vertebra | GFLOP/s | yardstick GFLOP/s | "
          "% of yardstick | % of yardstick (CPU s) | speed-up (wall) | speed-up (CPU) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    percents: dict[str, float] = {}
    for name, t in times.items():
        dtype = variants[name][0]
        yard_flops = yardsticks[dtype][1]
        median, cpu_median = statistics.median(t.case_wall), statistics.median(t.case_cpu)
        percents[name] = percent_of_yardstick(flops, t.case_wall, yard_flops, t.yardstick_wall)
        cpu_percent = percent_of_yardstick(flops, t.case_cpu, yard_flops, t.yardstick_cpu)
        runs = " ".join(f"{v:.1f}" for v in t.case_wall)
        print(f"| {name} ({dtype}) | {median:.1f} | {runs} | {cpu_median:.1f} | {flops / 1e9 / median:.1f} | "
              f"{yard_flops / 1e9 / statistics.median(t.yardstick_wall):.1f} | {percents[name]:.0f} % | "
              f"{cpu_percent:.0f} % | {baseline / median:.2f}x | {cpu_baseline / cpu_median:.2f}x |")
    print()
    for name, percent in percents.items():
        if name.startswith("batched"):
            target = TARGET_PERCENT[variants[name][0]]
            print(f"target {name} >= {target:.0f} % of its yardstick: {'met' if percent >= target else 'NOT met'} "
                  f"({percent:.0f} %)")
    for name, seconds in compile_seconds.items():
        print(f"{name}: compilation + first run {seconds:.1f} s, i.e. compilation about "
              f"{seconds - statistics.median(times[name].case_wall):.1f} s (wall)")
    for name in variants:
        suffix = next((s for s in (", bf16", ", compiled") if name.endswith(s)), None)
        if suffix:
            diff = changed_voxel_difference(results[name[:-len(suffix)]], results[name], ct, labels)
            ok = (diff["label_agreement_changed_percent"] >= TARGET_LABEL_AGREEMENT
                  and diff["ct_hu_median"] <= TARGET_MEDIAN_HU)
            print(f"{name} vs eager float32 on {diff['changed_voxels']} changed voxels: CT |difference| median "
                  f"{diff['ct_hu_median']:.2f} HU, p99 {diff['ct_hu_p99']:.2f} HU, max {diff['ct_hu_max']:.1f} HU; "
                  f"labels identical on {diff['label_agreement_changed_percent']:.2f} % of them "
                  f"({diff['label_agreement_crop_percent']:.3f} % of the crop); target (labels >= "
                  f"{TARGET_LABEL_AGREEMENT} %, median <= {TARGET_MEDIAN_HU:.0f} HU): {'met' if ok else 'NOT met'}")
    for name, (_, run) in variants.items():
        if args.profile > 0 and name.startswith("batched"):
            print(f"\nprofile of {name} (one run, self CPU time):")
            print(operator_profile(run, args.profile))
    return 0


def compiled_generator(generator: HealthiVertGenerator) -> HealthiVertGenerator:
    """A copy of ``generator`` (same weights, channels-last, eval) compiled with ``torch.compile``."""
    copy = HealthiVertGenerator(generator.ngf, generator.mask_height_px).eval()
    copy.load_state_dict(generator.state_dict())
    return compile_network(copy.to(memory_format=torch.channels_last), "cpu")


def warm_up(generator: HealthiVertGenerator, image_shape: tuple[int, int]) -> None:
    """One 2-slice generator call (allocator, oneDNN primitive creation) before timing."""
    zeros = np.zeros((2,) + tuple(image_shape), dtype=np.float32)
    GeneratorRunner(generator, batch_size=0)(zeros, np.zeros(2, dtype=np.float32), zeros, zeros, 8)


if __name__ == "__main__":
    sys.exit(main())
