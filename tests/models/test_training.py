"""Training loop helpers (models/training.py): validation metrics in band units and mm, resume option checks."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import pytest
import torch

from models.training import band_metrics, option_differences


def metrics_model() -> SimpleNamespace:
    """Two (1, 4, 3) samples: the band is rows 1-2 (6 pixels) of each."""
    band = torch.zeros(2, 1, 4, 3)
    band[:, :, 1:3] = 1.0
    real = torch.zeros(2, 1, 4, 3)
    fake = torch.zeros(2, 1, 4, 3)
    fake[0, :, 1:3] = 0.5  # |error| 0.5 in the whole band
    fake[0, :, 0] = 1.0  # outside the band: not counted
    fake[1, :, 1, 0] = -0.6  # one band pixel off by 0.6
    seg = torch.zeros(2, 1, 4, 3)
    target = torch.zeros(2, 1, 4, 3)
    seg[0, :, 1, :] = 0.9  # 3 predicted pixels, 2 of them on the 4-pixel target: Dice 2 * 2 / 7
    target[0, :, 1, 1:] = 1.0
    target[0, :, 2, 1:] = 1.0
    output = SimpleNamespace(fine_target_seg=seg, fine_height=torch.tensor([10.0, 7.5]))
    return SimpleNamespace(band_mask=band, real_ct=real, fake_ct=fake, target_label=target, output=output,
                           height_px=torch.tensor([12.0, 7.5]))


def test_band_metrics_against_hand_computed_values() -> None:
    metrics = band_metrics(metrics_model(), row_spacing_mm=0.8)
    assert metrics["band_l1"].tolist() == pytest.approx([0.5, 0.1])
    mse = [0.25, 0.36 / 6]
    assert metrics["band_psnr"].tolist() == pytest.approx([10 * math.log10(4 / m) for m in mse], rel=1e-5)
    assert metrics["dice"].tolist() == pytest.approx([4 / 7, 1.0])  # empty prediction of an empty target: 1
    assert metrics["height_error_mm"].tolist() == pytest.approx([1.6, 0.0])  # 2 rows x 0.8 mm


def test_resume_refuses_only_architecture_options_that_changed() -> None:
    saved = {"ngf": 16, "hu_window": [-1000, 2000], "lr": 0.1, "mask_height": 40.0}
    given = argparse.Namespace(ngf=32, hu_window=(-1000, 2000), lr=0.5, mask_height=40.0)
    assert option_differences(saved, given) == ["--ngf 16 -> 32"]  # lr is not an architecture option
    assert option_differences({}, given) == []
