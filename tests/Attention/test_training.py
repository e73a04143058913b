"""Attention.training: metrics, the learning-rate schedule, per-vertebra evaluation, option checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from Attention.slices import VertebraSlices
from Attention.training import classification_metrics, evaluate, linear_decay, parse_classifier_options


def test_classification_metrics():
    metrics = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.7, 0.8, 0.9]))
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["auc"] == pytest.approx(1.0)
    assert metrics["confusion_matrix"] == [[1, 1], [0, 2]]
    assert classification_metrics(np.array([0, 0]), np.array([0.2, 0.9]))["auc"] is None


def test_linear_decay_schedule():
    factor = linear_decay(2, 3)
    assert [factor(e) for e in range(5)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


class _BrightnessModel(nn.Module):
    """Logits (0, 4 * mean intensity): fracture probability rises with the slice's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(mean), 4.0 * mean], dim=1)


def test_evaluate_scores_each_vertebra_by_its_mean_slice_probability():
    bright = np.stack([np.full((4, 4), 1.0), np.full((4, 4), -0.5)]).astype(np.float16)
    dark = np.full((3, 4, 4), -1.0, np.float16)
    vertebrae = [VertebraSlices("a_20", 2, True, bright), VertebraSlices("a_21", 0, False, dark)]
    metrics = evaluate(_BrightnessModel(), vertebrae, torch.device("cpu"), batch_size=2)
    expected = np.mean(1 / (1 + np.exp(-4.0 * np.array([1.0, -0.5]))))
    assert metrics["fracture_probability"]["a_20"] == pytest.approx(expected, rel=1e-5)
    assert metrics["fracture_probability"]["a_21"] == pytest.approx(1 / (1 + np.exp(4.0)), rel=1e-5)
    assert metrics["balanced_accuracy"] == 1.0 and metrics["confusion_matrix"] == [[1, 0], [0, 1]]
    assert metrics["slice_balanced_accuracy"] == pytest.approx(0.75)  # one fractured slice scores healthy


@pytest.mark.parametrize("argv, message", [
    (["--n_slices", "0"], "--n_slices must be >= 1"),
    (["--n_epochs", "0", "--n_epochs_decay", "0"], "--n_epochs \\+ --n_epochs_decay must be >= 1"),
    (["--hu_window", "500", "100"], "HIGH must exceed LOW"),
])
def test_bad_options_are_refused(argv, message, tmp_path, capsys):
    split = tmp_path / "split.json"
    split.write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit):
        parse_classifier_options(["--split_json", str(split), *argv])
    assert re.search(message, capsys.readouterr().err)
