"""benchmarks/ablation.py: flags, the variants' step commands, and the table built from fixed metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import ablation
from pipeline.run import QUICK, DemoPaths


def test_flags_and_defaults() -> None:
    args = ablation.parse_args(["--out", "x", "--cases", "3", "--iterations", "7", "--seed", "5", "--threads", "2",
                                "--quick"])
    assert (args.cases, args.iterations, args.seed, args.threads, args.quick) == (3, 7, 5, 2, True)
    with pytest.raises(SystemExit):
        ablation.parse_args(["--iterations", "0"])


def test_each_variant_adds_only_its_own_flag(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    seen = {}
    for variant in ablation.VARIANTS:
        steps = {s.name: s for s in ablation.variant_steps(QUICK, paths, "-1", variant, 12)}
        assert list(steps) == list(ablation.VARIANT_STEPS)
        train_args, synthesis_args = steps["training"].args, steps["synthesis"].args
        assert train_args[-2:] == ["--max_steps", "12"]
        switches = {a for a in (*train_args, *synthesis_args) if a.startswith("--no_") and a != "--no_html"}
        seen[variant.slug] = switches
    assert seen == {"full": set(), "no_eem": {"--no_eem"}, "no_shrm": {"--no_shrm"}, "no_hgam": {"--no_hgam"},
                    "no_iterative": {"--no_iterative"}}


def test_table_has_one_row_per_variant_and_the_numbers_in_their_columns() -> None:
    full = {"n_all": 24, "n_adjacent": 10, "mae_anterior_all": 0.1, "mae_middle_all": 0.2, "mae_posterior_all": 0.3,
            "mae_anterior_adjacent": 0.4, "mae_middle_adjacent": 0.5, "mae_posterior_adjacent": 0.6,
            "macro_f1_threshold": 0.7, "macro_f1_svm": 0.8, "PSNR": 21.234, "SSIM": 0.9, "Dice": 0.85}
    failed = {"macro_f1_svm": math.nan}  # a variant whose steps produced nothing
    table = ablation.markdown_table({"full model": full, "no EEM (--no_eem)": failed})
    lines = table.splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["variant", "n (all / next to fracture)"] and header[2:] == list(ablation.COLUMNS)
    assert all(line.count("|") == len(header) + 1 for line in lines)
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row == ["full model", "24 / 10", "0.100", "0.200", "0.300", "0.400", "0.500", "0.600", "0.700", "0.800",
                   "21.23", "0.900", "0.850"]
    missing = [c.strip() for c in lines[3].strip("|").split("|")]
    assert missing[1] == "– / –" and set(missing[2:]) == {"–"}
