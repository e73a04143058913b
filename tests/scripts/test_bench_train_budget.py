"""benchmarks/bench_train_budget.py: per-iteration rates in windows, the budget arithmetic and the
--gan_epochs it maps to (phantom_accuracy.py trains N epochs plus N // 3 decay epochs)."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.bench_train_budget import (
    gan_epochs_for,
    iterations_in_budget,
    last_total_iters,
    process_cpu_s,
    training_iterations,
    window_rates,
)


def test_window_rates_recover_constant_rates_from_sparse_samples() -> None:
    # a loss-log row every 4 iterations; 0.3 CPU s and 1.2 wall s per iteration after a 10 s start-up
    samples = [(i, 10.0 + 1.2 * i, 5.0 + 0.3 * i) for i in range(4, 437, 4)]
    rates = window_rates(samples, warmup=48, window=128)
    assert len(rates) == 3  # 48 + 3 x 128 = 432 <= 436 < 48 + 4 x 128
    for rate in rates:
        assert rate.iterations == 128
        assert rate.cpu_s == pytest.approx(0.3)
        assert rate.wall_s == pytest.approx(1.2)


def test_window_rates_start_each_window_at_the_first_sample_past_its_boundary() -> None:
    # samples at 0, 6, ..., 78: windows from 48, 58 and 68 run over samples 48-60, 60-72 and 72-78
    samples = [(i, float(i), float(i * i)) for i in range(0, 80, 6)]
    rates = window_rates(samples, warmup=48, window=10)
    assert [r.iterations for r in rates] == [12, 12, 6]
    assert rates[0].cpu_s == pytest.approx((60 ** 2 - 48 ** 2) / 12)
    assert rates[1].cpu_s == pytest.approx((72 ** 2 - 60 ** 2) / 12)
    assert window_rates(samples, warmup=100, window=10) == []


def test_budget_of_the_038af31_table_on_the_current_code() -> None:
    assert training_iterations(200, 12) == 3192  # the old table: 200 + 66 epochs of 12 iterations
    fitted = iterations_in_budget(3192, 0.346953125, 0.323828125)  # the medians in benchmarks/README.md
    assert fitted == 3420
    assert gan_epochs_for(fitted, 12) == 214
    assert training_iterations(214, 12) == 3420  # 214 + 71 epochs


def test_gan_epochs_for_is_the_nearest_training_length() -> None:
    for per_epoch in (1, 12, 7):
        for target in range(per_epoch, 500 * per_epoch, 37):
            epochs = gan_epochs_for(target, per_epoch)
            best = min(abs(training_iterations(e, per_epoch) - target) for e in range(0, 600))
            assert abs(training_iterations(epochs, per_epoch) - target) == best
        for epochs in range(1, 300):
            assert gan_epochs_for(training_iterations(epochs, per_epoch), per_epoch) == epochs


def test_last_total_iters_reads_the_loss_log(tmp_path) -> None:
    log = tmp_path / "loss_log.csv"
    assert last_total_iters(log) == 0  # not written yet
    log.write_text("time,epoch,epoch_iter,total_iters,lr\n", encoding="utf-8")
    assert last_total_iters(log) == 0
    log.write_text("time,epoch,epoch_iter,total_iters,lr\nt,1,4,4,0.0002\nt,2,4,16,0.0002\n", encoding="utf-8")
    assert last_total_iters(log) == 16


def test_process_cpu_s_agrees_with_the_process_clock() -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("no /proc on this system")
    end = time.process_time() + 0.3
    while time.process_time() < end:  # busy, so that both clocks advance
        pass
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert process_cpu_s(os.getpid()) == pytest.approx(time.process_time(), abs=3 * tick)
