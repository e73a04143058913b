"""Convolution yardsticks and timing helpers shared by bench_models.py and bench_synthesis.py.

The yardstick is the machine's own convolution throughput, measured interleaved with each case
(one yardstick run before every timed run of the case), so that a case's GFLOP/s can be given as a
percentage of it even while other jobs load the machine: a 64-channel 3x3 convolution, batch 8,
128 x 128, channels-last (the generator's typical layer at 1/2 resolution), in float32 or under
bfloat16 autocast on the CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
YARDSTICK_INPUT = (8, 64, 128, 128)  # (batch, channels, rows, columns)
YARDSTICK_KERNEL = (64, 64, 3, 3)


def autocast(dtype: torch.dtype | None, device: str = "cpu") -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op for float32 (``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


def count_flops(run: Callable[[], object]) -> float:
    """FLOPs of one call of ``run`` (convolutions and matrix products, ``torch.utils.flop_counter``)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def conv_yardstick(dtype: torch.dtype | None) -> tuple[Callable[[], None], float]:
    """(run, FLOPs per run) of the yardstick convolution in float32 or under autocast to ``dtype``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*YARDSTICK_INPUT, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(*YARDSTICK_KERNEL, generator=generator).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.no_grad(), autocast(dtype):
            F.conv2d(x, weight, padding=1)

    return run, count_flops(run)


def conv_training_pass(dtype: torch.dtype | None) -> tuple[Callable[[], None], float]:
    """(run, FLOPs per run) of the yardstick convolution's training pass: forward, then the gradients of the
    input and of the weight (three convolutions' worth of FLOPs), in float32 or under autocast to ``dtype``.
    Its rate relative to the (forward) yardstick bounds what a training step made of such layers can reach."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*YARDSTICK_INPUT, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(*YARDSTICK_KERNEL, generator=generator).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    weight.requires_grad_(True)

    def run() -> None:
        with autocast(dtype):
            out = F.conv2d(x, weight, padding=1)
        torch.autograd.grad(out, [x, weight], torch.ones_like(out))

    return run, count_flops(run)


@dataclass
class InterleavedTimes:
    """Wall and process-CPU seconds of a case and of its yardstick, one pair per repeat."""

    case_wall: list[float] = field(default_factory=list)
    case_cpu: list[float] = field(default_factory=list)
    yardstick_wall: list[float] = field(default_factory=list)
    yardstick_cpu: list[float] = field(default_factory=list)


def time_interleaved(case: Callable[[], object], yardstick: Callable[[], None], repeats: int,
                     warm_up: bool = True) -> InterleavedTimes:
    """One warm-up of each (unless ``warm_up`` is False), then ``repeats`` x (yardstick, case)."""
    if warm_up:
        yardstick()
        case()
    times = InterleavedTimes()
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        yardstick()
        times.yardstick_wall.append(time.perf_counter() - start)
        times.yardstick_cpu.append(time.process_time() - cpu_start)
        start, cpu_start = time.perf_counter(), time.process_time()
        case()
        times.case_wall.append(time.perf_counter() - start)
        times.case_cpu.append(time.process_time() - cpu_start)
    return times


def percent_of_yardstick(flops: float, seconds: list[float], yardstick_flops: float,
                         yardstick_seconds: list[float]) -> float:
    """Throughput of a case (``flops`` per run, median of ``seconds``) as a percentage of the yardstick's."""
    return 100.0 * (flops / statistics.median(seconds)) / (yardstick_flops / statistics.median(yardstick_seconds))


def abs_difference_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Median, 99th percentile and maximum of |a - b| (same units as the inputs; 0s when empty)."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).ravel()
    if diff.size == 0:
        return {"median": 0.0, "p99": 0.0, "max": 0.0}
    return {"median": float(np.median(diff)), "p99": float(np.percentile(diff, 99)), "max": float(diff.max())}


def operator_profile(run: Callable[[], object], rows: int) -> str:
    """torch.profiler table of one call of ``run``: the ``rows`` operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
