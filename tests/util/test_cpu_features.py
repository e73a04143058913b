"""CPU model and bfloat16 capability detection from /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from util import cpu_features

CPUINFO_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2
"""

CPUINFO_ZEN3 = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse4_2 avx f16c avx2 fma
"""


def fake_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(cpu_features, "CPUINFO", path)


def test_flags_and_model_come_from_the_first_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpuinfo(tmp_path, monkeypatch, CPUINFO_AMX)
    assert cpu_features.cpu_model_name() == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"amx_bf16", "avx512_bf16", "avx512bw"} <= cpu_features.cpu_flags()
    summary = cpu_features.bf16_summary()
    assert "AMX-BF16: yes" in summary and "AVX-512 BF16: yes" in summary and "AVX-512F: yes" in summary


def test_avx2_only_cpu_has_no_bf16_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpuinfo(tmp_path, monkeypatch, CPUINFO_ZEN3)
    summary = cpu_features.bf16_summary()
    assert summary.startswith("AMD EPYC;")
    assert "AMX-BF16: no" in summary and "AVX-512 BF16: no" in summary and "AVX2: yes" in summary


def test_missing_cpuinfo_gives_empty_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_features, "CPUINFO", tmp_path / "absent")
    assert cpu_features.cpu_flags() == set()
    assert cpu_features.cpu_model_name()  # falls back to the platform's processor string
