"""Benchmark of the HealthiVert generator and training step on the CPU, in float32 and bfloat16.

Cases (each case and type in a fresh worker process, so its peak memory is its own):
- ``forward:B``: generator forward (eval, no grad) at batch B;
- ``train:B``: one full ``optimize_parameters`` step (generator + three PatchGANs) at batch B.
Each runs in every type of ``--dtypes``: ``fp32``, and ``bf16`` = bfloat16 autocast on the CPU with
float32 weights (forward: ``torch.autocast`` around the generator call; training: the model's
``--amp --amp_dtype bf16`` when the model has that option, else every autocast region of the model
switched to bfloat16 for the step, see ``bf16_training``).

Every case is measured against its type's convolution yardstick (``benchmarks/yardsticks.py``: a
64-channel 3x3 convolution, 8x64x128x128, channels-last), run once before each timed run of the case
in the same worker: the case's GFLOP/s is given as a percentage of the yardstick's. FLOPs are counted
with ``torch.utils.flop_counter`` (convolutions and matrix products) at batch 1 and scaled by the
batch. The ``bf16`` forward cases also report the bfloat16 vs float32 difference of the same
generator on the same inputs over the band pixels: fine CT in HU (median, p99) and the agreement of
the target labels (fine segmentation > 0.5). Times are medians of ``--repeats`` runs after one warm-up.
With ``--compile`` every case also runs with the model's networks compiled by ``torch.compile``
(``models.compilation``, as ``train.py --compile``), in its own worker: its first call (compilation + one run)
is timed apart, and the forward cases give the largest compiled vs eager difference of the same generator.

    python benchmarks/bench_models.py [--size 256] [--threads 2] [--repeats 5] [--dtypes fp32 bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.yardsticks import (
    DTYPES,
    abs_difference_stats,
    autocast,
    conv_training_pass,
    conv_yardstick,
    count_flops,
    operator_profile,
    percent_of_yardstick,
    time_interleaved,
)
from data.image_io import unwindow
from util.cpu_features import bf16_summary

TARGET_PEAK_GB = {"train:8": 6.0}
TARGET_PERCENT = {("train:8", "fp32"): 90.0, ("train:8", "bf16"): 50.0}
SEGMENTATION_THRESHOLD = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image size (pixels, divisible by 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--ngf", type=int, default=16, help="generator width")
    parser.add_argument("--cases", nargs="+", default=["forward:1", "forward:8", "train:8"],
                        help="cases to run: forward:B, train:B (conv, the former yardstick case, is accepted "
                             "and runs nothing: the yardsticks run inside every case)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES),
                        help="types to run every case in (bf16: bfloat16 autocast)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, run each case once under torch.profiler and print its N operators "
                             "with the most self CPU time (to stderr)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--compile", action="store_true",
                        help="also run every case with the networks compiled by torch.compile (own worker)")
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", type=str, default="fp32", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def peak_rss_gb() -> float:
    """Maximum resident set size of this process so far, GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def model_options(ngf: int, bf16: bool) -> tuple[argparse.Namespace, bool]:
    """Training options of the HealthiVert model; with ``bf16``, ``--amp --amp_dtype bf16`` when the model
    has ``--amp_dtype``. Returns (options, whether the model itself runs bfloat16)."""
    import models

    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu_ids", default="-1")
    parser.add_argument("--checkpoints_dir", default="checkpoints")
    parser.add_argument("--name", default="bench")
    models.get_option_setter("healthivert")(parser, True)
    native_bf16 = bf16 and "--amp_dtype" in parser._option_string_actions
    opt = parser.parse_args(["--ngf", str(ngf)] + (["--amp", "--amp_dtype", "bf16"] if native_bf16 else []))
    opt.isTrain = True
    return opt, native_bf16


@contextlib.contextmanager
def bf16_training() -> Iterator[None]:
    """For a model without ``--amp_dtype``: its mixed-precision regions (``torch.autocast(..., dtype=
    torch.float16, enabled=use_amp)``, off on the CPU) run under CPU bfloat16 autocast instead; autocast
    regions that do not ask for float16 (contextual attention's float32 region) are left as they are."""
    real_autocast = torch.autocast

    def patched(device_type: str, dtype: torch.dtype | None = None, enabled: bool = True,
                cache_enabled: bool | None = None) -> torch.autocast:
        if dtype == torch.float16:
            return real_autocast("cpu", dtype=torch.bfloat16, enabled=True)
        return real_autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    torch.autocast = patched  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.autocast = real_autocast  # type: ignore[assignment]


def build_model(case: str, size: int, ngf: int, dtype: torch.dtype | None):
    """The HealthiVert model with a synthetic batch of the case's size set as input."""
    import models
    from models.synthetic import synthetic_batch

    torch.manual_seed(0)
    opt, native_bf16 = model_options(ngf, dtype is not None)
    model = models.create_model(opt)
    model.setup(model.opt, load=False)
    model.set_input(synthetic_batch(int(case.split(":")[1]), size))
    model.native_bf16 = native_bf16
    return model


def generator_call(model, dtype: torch.dtype | None):
    """Generator forward of the model's current input, eval, no grad, under autocast to ``dtype``."""
    with torch.no_grad(), autocast(dtype):
        return model.netG(model.masked_ct, model.offset_plane, model.band_mask, model.cam, model.mask_height_px)


def build_case(case: str, size: int, ngf: int, dtype: torch.dtype | None) -> tuple[Callable[[], object], object]:
    """(the function one timed run calls, the model)."""
    kind = case.split(":")[0]
    model = build_model(case, size, ngf, dtype)
    if kind == "forward":
        model.netG.eval()
        return (lambda: generator_call(model, dtype)), model
    if kind == "train":
        if dtype is None or model.native_bf16:
            return model.optimize_parameters, model

        def step() -> None:
            with bf16_training():
                model.optimize_parameters()

        return step, model
    raise ValueError(f"unknown case {case!r}")


def compile_case(run: Callable[[], object], model) -> dict[str, object]:
    """Compile the model's networks in place (``--compile``), time the first call (compilation + one run) and, for
    a forward case, compare the compiled generator's output with the eager one's on the same input."""
    import time

    from models.compilation import compile_networks

    eager = run() if isinstance(model.netG, torch.nn.Module) and not model.netG.training else None
    compile_networks(model.networks(), "cpu")
    start = time.perf_counter()
    compiled = run()
    result: dict[str, object] = {"compile_s": time.perf_counter() - start}
    if eager is not None:
        ct = [unwindow(o.fine_ct.float().numpy()) for o in (eager, compiled)]
        result["compiled_vs_eager"] = {
            "ct_hu_max": abs_difference_stats(*ct)["max"],
            "seg_max": float((eager.fine_target_seg - compiled.fine_target_seg).abs().max())}
    return result


def forward_difference(model) -> dict[str, float]:
    """bfloat16 vs float32 generator output on the band pixels: |fine CT difference| in HU and the
    percentage of band pixels whose target label (fine segmentation > 0.5) agrees."""
    outputs = [generator_call(model, dtype) for dtype in (None, torch.bfloat16)]
    band = model.band_mask.expand_as(outputs[0].fine_ct).numpy() > 0.5
    ct = [unwindow(o.fine_ct.float().numpy()[band]) for o in outputs]
    labels = [o.fine_target_seg.float().numpy()[band] > SEGMENTATION_THRESHOLD for o in outputs]
    stats = abs_difference_stats(*ct)
    return {"ct_hu_median": stats["median"], "ct_hu_p99": stats["p99"], "ct_hu_max": stats["max"],
            "label_agreement_percent": 100.0 * float(np.mean(labels[0] == labels[1]))}


def run_worker(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    yardstick, yardstick_flops = conv_yardstick(dtype)
    run, model = build_case(args.worker, args.size, args.ngf, dtype)
    extra: dict[str, object] = {}
    if args.compiled:
        extra = compile_case(run, model)
    base_gb = peak_rss_gb()
    times = time_interleaved(run, yardstick, args.repeats)
    peak_gb = peak_rss_gb()
    # FLOPs per sample do not depend on the batch or the type; counting at batch 1 in float32 avoids
    # flop_counter's overcount of grouped-convolution backward (it ignores groups).
    batch = int(args.worker.split(":")[1])
    kind = args.worker.split(":")[0]
    flops = batch * count_flops(build_case(f"{kind}:1", args.size, args.ngf, None)[0])
    result = {"case": args.worker, "dtype": args.dtype, "wall_s": times.case_wall, "cpu_s": times.case_cpu,
              "yardstick_wall_s": times.yardstick_wall, "yardstick_cpu_s": times.yardstick_cpu,
              "yardstick_flops": yardstick_flops, "flops": flops,
              "peak_rss_gb": peak_gb, "rss_before_gb": base_gb, "compiled": args.compiled, **extra}
    if kind == "train":  # the yardstick layer's own training pass against the yardstick, same worker
        training_pass, training_pass_flops = conv_training_pass(dtype)
        pass_times = time_interleaved(training_pass, yardstick, args.repeats)
        result["yardstick_training_pass_percent"] = percent_of_yardstick(
            training_pass_flops, pass_times.case_cpu, yardstick_flops, pass_times.yardstick_cpu)
    if kind == "train" and dtype is not None:
        result["bf16_via"] = "--amp --amp_dtype bf16" if model.native_bf16 else "autocast regions switched to bf16"
    if kind == "forward" and dtype is not None:
        result["bf16_vs_fp32"] = forward_difference(model)
    if args.profile > 0:
        print(f"profile of {args.worker} {args.dtype} (one run, self CPU time):\n{operator_profile(run, args.profile)}",
              file=sys.stderr)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.size % 8:
        print(f"--size {args.size} must be divisible by 8", file=sys.stderr)
        return 2
    if "conv" in args.cases:  # the former stand-alone yardstick case: it now runs inside every case
        print("conv: the convolution yardsticks run inside every case; nothing to run on its own", file=sys.stderr)
    load_before = os.getloadavg()
    results, failures = [], []
    modes = (False, True) if args.compile else (False,)
    cases = [c for c in args.cases if c != "conv"]
    for case, dtype_name, compiled in itertools.product(cases, args.dtypes, modes):
        label = f"{case} {dtype_name}{' compiled' if compiled else ''}"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--dtype", dtype_name,
                   "--size", str(args.size), "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--ngf", str(args.ngf), "--profile", str(args.profile)] + (["--compiled"] if compiled else [])
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=None if args.profile else subprocess.PIPE,
                              encoding="utf-8")
        if proc.returncode:
            failures.append(label)
            print(f"{label}: worker failed: {(proc.stderr or '').strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{label}: median {statistics.median(results[-1]['wall_s']):.3f} s", file=sys.stderr)
    load_after = os.getloadavg()

    print(f"machine: {bf16_summary()}; {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
          f"{args.threads} threads; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"command: python benchmarks/bench_models.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    from models.networks import HealthiVertGenerator, count_parameters

    print(f"generator parameters (ngf {args.ngf}): {count_parameters(HealthiVertGenerator(args.ngf)):,}; "
          f"yardstick: 64-channel 3x3 convolution 8x64x128x128 channels-last, run before each timed run")
    print()
    print("| case | batch | type | median s | CPU s | GFLOP | GFLOP/s | yardstick GFLOP/s | % of yardstick | "
          "% of yardstick (CPU s) | peak RSS GB | bf16 vs fp32: CT median / p99 HU, label agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        kind, batch = res["case"].split(":")
        median = statistics.median(res["wall_s"])
        gflop = res["flops"] / 1e9
        yard = res["yardstick_flops"] / 1e9 / statistics.median(res["yardstick_wall_s"])
        res["percent_of_yardstick"] = percent_of_yardstick(res["flops"], res["wall_s"], res["yardstick_flops"],
                                                           res["yardstick_wall_s"])
        res["percent_of_yardstick_cpu"] = percent_of_yardstick(res["flops"], res["cpu_s"], res["yardstick_flops"],
                                                               res["yardstick_cpu_s"])
        diff = res.get("bf16_vs_fp32")
        diff_text = (f"{diff['ct_hu_median']:.2f} / {diff['ct_hu_p99']:.2f}, {diff['label_agreement_percent']:.2f} %"
                     if diff else "-")
        type_name = res["dtype"] + (" compiled" if res.get("compiled") else "")
        print(f"| {kind} | {batch} | {type_name} | {median:.3f} | {statistics.median(res['cpu_s']):.2f} "
              f"| {gflop:.1f} | {gflop / median:.1f} | {yard:.1f} | {res['percent_of_yardstick']:.0f} % "
              f"| {res['percent_of_yardstick_cpu']:.0f} % | {res['peak_rss_gb']:.2f} | {diff_text} |")
    for res in results:
        if "yardstick_training_pass_percent" in res:
            print(f"{res['case']} {res['dtype']}: the yardstick convolution's own training pass (forward, input and "
                  f"weight gradients) runs at {res['yardstick_training_pass_percent']:.0f} % of the yardstick "
                  f"(CPU s, same worker)")
    for res in results:
        if "compile_s" in res:
            diff = res.get("compiled_vs_eager")
            diff_text = (f"; compiled vs eager generator: fine CT max |difference| {diff['ct_hu_max']:.4f} HU, "
                         f"segmentation {diff['seg_max']:.2e}" if diff else "")
            print(f"{res['case']} {res['dtype']} compiled: compilation + first run {res['compile_s']:.1f} s "
                  f"(wall){diff_text}")
    for res in results:
        if "bf16_via" in res:
            print(f"bf16 training step of {res['case']}: {res['bf16_via']}")
    print()
    for res in results:
        target = TARGET_PERCENT.get((res["case"], res["dtype"]))
        if target is not None and args.size == 256:
            met = res["percent_of_yardstick"] >= target
            print(f"target {res['case']} {res['dtype']} >= {target:.0f} % of its yardstick: "
                  f"{'met' if met else 'NOT met'} ({res['percent_of_yardstick']:.0f} %)")
        peak_target = TARGET_PEAK_GB.get(res["case"])
        if peak_target is not None and res["dtype"] == "fp32":
            print(f"target {res['case']} peak memory < {peak_target} GB: "
                  f"{'met' if res['peak_rss_gb'] < peak_target else 'NOT met'} ({res['peak_rss_gb']:.2f} GB)")
    if args.json:
        from util.fileio import write_json

        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()},
                               "load_average": [load_before[0], load_after[0]], "results": results})
    if failures:
        print(f"failed cases: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
