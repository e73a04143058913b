"""models/base_model.py: each learning-rate policy gives, epoch by epoch, the rate computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from models.base_model import ScheduleSettings, get_scheduler

LR = 2e-4


def lrs(policy: str, epochs: int, metrics: list[float] | None = None, **options) -> list[float]:
    """The first group's rate before any step and after each of ``epochs`` scheduler steps (one per epoch)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = get_scheduler(optimizer, ScheduleSettings(lr_policy=policy, **options))
    rates = [optimizer.param_groups[0]["lr"]]
    for epoch in range(epochs):
        optimizer.step()  # no gradient: the weights stay, the scheduler sees the usual order
        scheduler.step(metrics[epoch]) if metrics is not None else scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_linear_is_constant_for_n_epochs_then_falls_to_zero_over_n_epochs_decay() -> None:
    # 1 - max(0, e + 1 - 3) / 5 for e = 0..7: three epochs at LR, then 4/5, 3/5, 2/5, 1/5, 0
    expected = [LR * f for f in (1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0.0)]
    assert lrs("linear", 7, n_epochs=3, n_epochs_decay=4, epoch_count=1) == pytest.approx(expected, abs=1e-12)


def test_linear_resumed_at_a_later_epoch_count_starts_where_that_epoch_is() -> None:
    # --epoch_count 4 (continue at epoch 4): e + 4 - 3 is already 1 at e = 0
    expected = [LR * f for f in (0.8, 0.6, 0.4, 0.2, 0.0)]
    assert lrs("linear", 4, n_epochs=3, n_epochs_decay=4, epoch_count=4) == pytest.approx(expected, abs=1e-12)


def test_step_divides_by_ten_every_lr_decay_iters_epochs() -> None:
    expected = [LR * f for f in (1, 1, 0.1, 0.1, 0.01, 0.01, 0.001)]
    assert lrs("step", 6, lr_decay_iters=2) == pytest.approx(expected, rel=1e-9)


def test_cosine_follows_half_a_cosine_over_n_epochs() -> None:
    expected = [LR * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]
    assert lrs("cosine", 4, n_epochs=4) == pytest.approx(expected, abs=1e-12)
    assert expected[-1] == pytest.approx(0.0, abs=1e-12)


def test_plateau_multiplies_by_0_2_after_six_epochs_without_a_1_percent_gain() -> None:
    flat = [1.0, 0.999, 1.0, 0.995, 1.0, 1.0, 1.0]  # gains under 1 % (threshold 0.01, relative) do not count
    assert lrs("plateau", 7, metrics=flat) == pytest.approx([LR] * 7 + [LR * 0.2], rel=1e-9)
    improving = [1.0 * 0.95**e for e in range(8)]  # 5 % better every epoch: never reduced
    assert lrs("plateau", 8, metrics=improving) == pytest.approx([LR] * 9, rel=1e-9)


def test_an_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown lr_policy 'exp' \(linear \| step \| plateau \| cosine\)"):
        lrs("exp", 0)
