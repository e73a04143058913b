"""benchmarks/bench_amp_training.py: the fp32 vs bf16 verdict from two runs' validation logs."""

from __future__ import annotations

import pytest

from benchmarks.bench_amp_training import parse_args, read_validations, tabulate, train_command

HEADER = "time,epoch,total_iters,band_l1,band_psnr,dice,height_error_mm\n"


def write_log(folder, rows):
    folder.mkdir(parents=True)
    lines = [f"t,{step // 3},{step},{l1},20.0,0.9,{height}\n" for step, l1, height in rows]
    (folder / "val_log.csv").write_text(HEADER + "".join(lines), encoding="utf-8")


def test_verdict_compares_the_last_validation_both_runs_reached(tmp_path, capsys):
    write_log(tmp_path / "curve_fp32", [(60, 0.20, 2.0), (120, 0.10, 1.0), (180, 0.10, 1.0)])
    write_log(tmp_path / "curve_bf16", [(60, 0.50, 9.0), (120, 0.105, 1.08)])  # stopped earlier
    assert read_validations(tmp_path / "curve_bf16" / "val_log.csv")[120] == {"band_l1": 0.105,
                                                                               "height_error_mm": 1.08}
    assert tabulate(tmp_path, tolerance=10.0)  # step 120: 5 % and 8 % apart; step 60 is not judged
    out = capsys.readouterr().out
    assert "step 120: band_l1" in out and "| 180 | 0.1000 | - |" in out
    assert not tabulate(tmp_path, tolerance=6.0)  # the height error is 8 % apart


def test_no_common_validation_fails(tmp_path):
    write_log(tmp_path / "curve_fp32", [(60, 0.2, 2.0)])
    assert not tabulate(tmp_path, tolerance=10.0)


@pytest.mark.parametrize("name, amp", [("fp32", False), ("bf16", True)])
def test_both_runs_share_seed_steps_and_a_constant_learning_rate(tmp_path, name, amp):
    args = parse_args(["--out", str(tmp_path), "--steps", "90", "--seed", "3"])
    command = train_command(tmp_path / "cohort", tmp_path / "checkpoints", name, args)
    flags = dict(zip(command[1::2], command[2::2]))
    assert flags["--seed"] == "3" and flags["--max_steps"] == "90"
    assert flags["--n_epochs_decay"] == "0" and int(flags["--n_epochs"]) >= 90  # lr constant over every epoch
    assert (command[-3:] == ["--amp", "--amp_dtype", "bf16"]) == amp and ("--amp" in command) == amp
