"""Benchmark of the HealthiVert generator and training step on the CPU.

Cases (each in a fresh worker process, so its peak memory is its own):
- ``conv``: a 64-channel 3x3 convolution (8x64x128x128, channels-last): the machine's convolution
  throughput, measured in the same run as the yardstick for the model's GFLOP/s;
- ``forward:B``: generator forward (no grad) at batch B;
- ``train:B``: one full ``optimize_parameters`` step (generator + three PatchGANs) at batch B.
FLOPs are counted with ``torch.utils.flop_counter`` (convolutions and matrix products) at batch 1
and scaled by the batch size. Times are
medians of ``--repeats`` runs after one warm-up. Peak memory is the worker's maximum resident set.

    python benchmarks/bench_models.py [--size 256] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

# Published implementation on this 2-core machine (torch 2.14.1, 2 threads), seconds.
REFERENCE_SECONDS = {"forward:1": 0.29, "forward:8": 2.74, "train:1": 1.6, "train:8": 12.8}
REFERENCE_CONV_GFLOPS = 210.0
TARGET_SECONDS = {"forward:8": 2.0, "train:8": 9.5}
TARGET_PEAK_GB = {"train:8": 6.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image size (pixels, divisible by 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--ngf", type=int, default=16, help="generator width")
    parser.add_argument("--cases", nargs="+", default=["conv", "forward:1", "forward:8", "train:1", "train:8"],
                        help="cases to run: conv, forward:B, train:B")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def peak_rss_gb() -> float:
    """Maximum resident set size of this process so far, GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def time_runs(run: Callable[[], None], repeats: int) -> tuple[list[float], list[float]]:
    """One warm-up, then ``repeats`` timed runs: (wall seconds, process CPU seconds)."""
    run()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def count_flops(run: Callable[[], None]) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def model_options(ngf: int) -> argparse.Namespace:
    import models

    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu_ids", default="-1")
    parser.add_argument("--checkpoints_dir", default="checkpoints")
    parser.add_argument("--name", default="bench")
    models.get_option_setter("healthivert")(parser, True)
    opt = parser.parse_args(["--ngf", str(ngf)])
    opt.isTrain = True
    return opt


def build_case(case: str, size: int, ngf: int) -> Callable[[], None]:
    """The function one timed run calls."""
    if case == "conv":
        x = torch.randn(8, 64, 128, 128).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(64, 64, 3, 3).contiguous(memory_format=torch.channels_last)

        def conv() -> None:
            with torch.no_grad():
                F.conv2d(x, weight, padding=1)

        return conv
    import models
    from models.synthetic import synthetic_batch

    kind, batch = case.split(":")
    model = models.create_model(model_options(ngf))
    model.setup(model.opt, load=False)
    model.set_input(synthetic_batch(int(batch), size))
    if kind == "forward":
        model.netG.eval()

        def forward() -> None:
            with torch.no_grad():
                model.netG(model.masked_ct, model.offset_plane, model.band_mask, model.cam, model.mask_height_px)

        return forward
    if kind == "train":
        return model.optimize_parameters
    raise ValueError(f"unknown case {case!r}")


def run_worker(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run = build_case(args.worker, args.size, args.ngf)
    base_gb = peak_rss_gb()
    walls, cpus = time_runs(run, args.repeats)
    peak_gb = peak_rss_gb()
    # FLOPs per sample do not depend on the batch; counting at batch 1 avoids flop_counter's
    # overcount of grouped-convolution backward (it ignores groups), which the batched attention uses.
    batch = int(args.worker.split(":")[1]) if ":" in args.worker else 1
    flops = count_flops(build_case(args.worker.split(":")[0] + ":1", args.size, args.ngf) if batch > 1 else run)
    flops *= batch
    print(json.dumps({"case": args.worker, "wall_s": walls, "cpu_s": cpus, "flops": flops,
                      "peak_rss_gb": peak_gb, "rss_before_gb": base_gb}))
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.size % 8:
        print(f"--size {args.size} must be divisible by 8", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    results, failures = {}, []
    for case in args.cases:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--size", str(args.size),
                   "--threads", str(args.threads), "--repeats", str(args.repeats), "--ngf", str(args.ngf)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode:
            failures.append(case)
            print(f"{case}: worker failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case}: median {statistics.median(results[case]['wall_s']):.3f} s", file=sys.stderr)
    load_after = os.getloadavg()
    conv = results.get("conv")
    conv_gflops = conv["flops"] / 1e9 / statistics.median(conv["wall_s"]) if conv else float("nan")

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
          f"{args.threads} threads; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"command: python benchmarks/bench_models.py --size {args.size} --threads {args.threads} "
          f"--repeats {args.repeats} --ngf {args.ngf}")
    from models.networks import HealthiVertGenerator, count_parameters

    print(f"generator parameters (ngf {args.ngf}): {count_parameters(HealthiVertGenerator(args.ngf)):,}")
    print(f"64-channel 3x3 convolution: {conv_gflops:.0f} GFLOP/s (reference machine: {REFERENCE_CONV_GFLOPS:.0f})")
    print()
    print("| case | batch | median s | min s | CPU s | GFLOP | GFLOP/s | % of conv | reference s | speed-up | "
          "peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case, res in results.items():
        if case == "conv":
            continue
        kind, batch = case.split(":")
        median = statistics.median(res["wall_s"])
        gflop = res["flops"] / 1e9
        ref = REFERENCE_SECONDS.get(case) if args.size == 256 and args.ngf == 16 else None
        print(f"| {kind} | {batch} | {median:.3f} | {min(res['wall_s']):.3f} | {statistics.median(res['cpu_s']):.2f} "
              f"| {gflop:.1f} | {gflop / median:.0f} | {100 * gflop / median / conv_gflops:.0f} % "
              f"| {ref if ref else '-'} | {f'{ref / median:.2f}x' if ref else '-'} | {res['peak_rss_gb']:.2f} |")
    if args.size == 256 and args.ngf == 16:
        print()
        for case, target in TARGET_SECONDS.items():
            if case in results:
                median = statistics.median(results[case]["wall_s"])
                print(f"target {case} <= {target} s: {'met' if median <= target else 'NOT met'} ({median:.2f} s)")
        for case, target in TARGET_PEAK_GB.items():
            if case in results:
                peak = results[case]["peak_rss_gb"]
                print(f"target {case} peak memory < {target} GB: {'met' if peak < target else 'NOT met'} "
                      f"({peak:.2f} GB)")
    if args.json:
        from util.fileio import write_json

        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "conv_gflops": conv_gflops,
                               "load_average": [load_before[0], load_after[0]], "results": results})
    if failures:
        print(f"failed cases: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
