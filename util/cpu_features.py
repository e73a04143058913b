"""What the CPU offers for bfloat16: model name, instruction-set flags, oneDNN's bfloat16 support.

PyTorch runs CPU convolutions under bfloat16 autocast in oneDNN only where the CPU has AVX-512
(AVX-512 BF16 or AMX-BF16 for native bfloat16 arithmetic); elsewhere (e.g. an AVX2-only AMD EPYC)
they fall back to a generic kernel that is about 10x slower than float32 (benchmarks/README.md).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_field(name: str) -> str:
    """The first ``name : value`` field of /proc/cpuinfo ('' when absent or unreadable)."""
    try:
        for line in CPUINFO.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return ""


def cpu_model_name() -> str:
    """The CPU model as the kernel reports it, else the platform's processor string."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """Instruction-set flags of the first CPU in /proc/cpuinfo (empty off Linux)."""
    return set(cpuinfo_field("flags").split())


def onednn_bf16_supported() -> bool:
    """Whether PyTorch runs bfloat16 convolutions in oneDNN on this CPU (else a slow generic kernel)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None:
        try:
            return bool(check())
        except RuntimeError:
            pass
    return {"avx512bw", "avx512vl", "avx512dq"} <= cpu_flags()


def bf16_summary() -> str:
    """One line: CPU model, AMX-BF16 / AVX-512 BF16 / AVX-512 presence and oneDNN bfloat16 support."""
    flags = cpu_flags()

    def has(flag: str) -> str:
        return "yes" if flag in flags else "no"

    return (f"{cpu_model_name()}; AMX-BF16: {has('amx_bf16')}, AVX-512 BF16: {has('avx512_bf16')}, "
            f"AVX-512F: {has('avx512f')}, AVX2: {has('avx2')}; oneDNN bfloat16 convolutions: "
            f"{'yes' if onednn_bf16_supported() else 'no (generic fallback kernel)'}")
