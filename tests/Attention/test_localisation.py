"""Attention localisation measure (Attention/localisation.py) on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from Attention.localisation import aggregate, localise, summarise, target_body
from pipeline.figures import attention_on_target, attention_title

SHAPE = (32, 24, 8)


def target_and_neighbour() -> tuple[np.ndarray, np.ndarray]:
    """Target body rows 12..19, neighbour body rows 0..5 (7 rows apart: beyond 2 voxels of slack)."""
    target = np.zeros(SHAPE, dtype=bool)
    target[12:20, 6:18, 2:6] = True
    neighbour = np.zeros(SHAPE, dtype=bool)
    neighbour[0:6, 6:18, 2:6] = True
    return target, neighbour


def test_map_inside_the_target_has_share_one_and_peak_in() -> None:
    target, _ = target_and_neighbour()
    cam = np.where(target, 0.7, 0.0)
    cam[15, 10, 3] = 1.0
    measure = localise(cam, target)
    assert measure.mass_share == pytest.approx(1.0)
    assert measure.peak_in_target is True
    assert measure.mean_value == pytest.approx(cam.mean())


def test_map_on_the_neighbour_has_share_zero_and_peak_out() -> None:
    target, neighbour = target_and_neighbour()
    measure = localise(np.where(neighbour, 0.9, 0.0), target)
    assert measure.mass_share == pytest.approx(0.0)
    assert measure.peak_in_target is False


def test_a_map_on_a_fractured_neighbour_counts_as_on_a_fracture_not_on_the_target() -> None:
    target, neighbour = target_and_neighbour()
    cam = np.where(neighbour, 0.9, 0.0) + np.where(target, 0.3, 0.0)
    both = localise(cam, target, fractured=target | neighbour)
    target_mass, neighbour_mass = 0.3 * target.sum(), 0.9 * neighbour.sum()
    assert both.mass_share == pytest.approx(target_mass / (target_mass + neighbour_mass))
    assert both.peak_in_target is False and both.peak_on_fracture is True
    assert both.fracture_mass_share == pytest.approx(1.0)
    healthy_neighbour = localise(cam, target, fractured=target)  # only the target is fractured
    assert healthy_neighbour.peak_on_fracture is False
    assert healthy_neighbour.fracture_mass_share == pytest.approx(healthy_neighbour.mass_share)
    assert localise(cam, target).peak_on_fracture is None  # no truth: not measured
    with pytest.raises(ValueError, match="fractured mask"):
        localise(cam, target, fractured=np.zeros((4, 4), dtype=bool))
    summary = aggregate([{**both.as_dict(), "fractured": True}, {**healthy_neighbour.as_dict(), "fractured": True}])
    assert summary["fractured"]["peak_on_fracture"] == 1 and summary["fractured"]["peak_in_target"] == 0
    assert summary["fractured"]["mean_fracture_mass_share"] == pytest.approx(
        (1.0 + healthy_neighbour.fracture_mass_share) / 2)


def test_uniform_map_share_is_the_volume_fraction_of_the_dilated_body() -> None:
    target, _ = target_and_neighbour()
    measure = localise(np.full(SHAPE, 0.3), target, slack_voxels=2)
    # target 8 x 12 x 4 grown by 2 in every axis: 12 x 16 x 8 (all inside the 32 x 24 x 8 crop)
    assert measure.body_fraction == pytest.approx(12 * 16 * 8 / np.prod(SHAPE))
    assert measure.mass_share == pytest.approx(measure.body_fraction)
    assert measure.mean_value == pytest.approx(0.3)
    assert localise(np.full(SHAPE, 0.3), target, slack_voxels=0).mass_share == pytest.approx(target.mean())


def test_slack_counts_the_border_and_zero_map_is_none() -> None:
    target, _ = target_and_neighbour()
    ring = target_body(target, 2) & ~target_body(target, 1)
    cam = np.where(ring, 1.0, 0.0)
    assert localise(cam, target, 2).mass_share == pytest.approx(1.0)
    assert localise(cam, target, 1).mass_share == pytest.approx(0.0)
    empty = localise(np.zeros(SHAPE), target)
    assert empty.mass_share is None and empty.peak_in_target is None and empty.mean_value == 0.0
    with pytest.raises(ValueError, match="does not match"):
        localise(np.zeros((4, 4)), target)


def test_aggregate_splits_fractured_and_healthy_and_summarise_by_morphology() -> None:
    records = {
        "a_20": {"mass_share": 0.8, "peak_in_target": True, "mean_value": 0.1, "fractured": True,
                 "morphology": "wedge"},
        "a_21": {"mass_share": 0.2, "peak_in_target": False, "mean_value": 0.3, "fractured": True,
                 "morphology": "crush"},
        "a_22": {"mass_share": 0.1, "peak_in_target": False, "mean_value": 0.05, "fractured": False,
                 "morphology": "none"},
    }
    overall = aggregate(records.values())
    assert overall["fractured"] == {"n": 2, "mean_mass_share": pytest.approx(0.5), "peak_in_target": 1,
                                    "peak_in_target_fraction": pytest.approx(0.5)}
    assert overall["healthy"] == {"n": 1, "mean_value": pytest.approx(0.05)}
    by = summarise(records)["by_morphology"]
    assert set(by) == {"wedge", "crush", "none"} and by["wedge"]["fractured"]["peak_in_target"] == 1


def test_report_panels_use_the_same_measure() -> None:
    target = np.zeros((16, 16), dtype=bool)
    target[6:10, 6:10] = True
    cam = np.zeros((16, 16))
    cam[7, 7] = 1.0
    cam[0, 0] = 0.5  # off the body: a third of the mass
    assert attention_on_target(cam, target) == pytest.approx(localise(cam, target).mass_share) == pytest.approx(2 / 3)
    assert "peak on target" in attention_title(cam, target) and "MISSES" not in attention_title(cam, target)
    cam[0, 0] = 1.5  # the peak moves off the body
    assert "peak off target" in attention_title(cam, target) and "MISSES TARGET" in attention_title(cam, target)
    assert "MISSES TARGET" not in attention_title(cam, target, fractured=False)  # a healthy target: no flag
    neighbour = np.zeros((16, 16), dtype=bool)
    neighbour[0:2, 0:2] = True  # the peak at (0, 0) lies on a fractured neighbour's body
    on_neighbour = attention_title(cam, target, True, fractures=target | neighbour)
    assert "peak on a fractured neighbour" in on_neighbour and "MISSES" not in on_neighbour
    assert "MISSES TARGET" in attention_title(cam, target, True, fractures=target)  # that neighbour healthy
