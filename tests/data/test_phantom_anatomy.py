"""data.phantoms.anatomy: the body height definition, fracture morphologies and posterior elements, in mm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.phantoms.anatomy import (
    Vertebra,
    draw_vertebrae,
    endplates,
    height_loss,
    posterior_box,
    region_centres_mm,
    regional_heights,
)
from data.phantoms.spec import CaseSpec, Fracture
from evaluation.genant import ANATOMICAL_REGIONS


def l1(fracture: Fracture | None = None, seed: int = 4) -> Vertebra:
    """The L1 (VerSe 20) of a T12-L2 case drawn from ``seed``, with ``fracture``."""
    spec = CaseSpec("anatomy", seed, labels=(19, 20, 21), fractures={20: fracture} if fracture else {})
    return draw_vertebrae(spec, np.random.default_rng(seed))[1]


def test_region_centres_are_the_centres_of_the_thirds() -> None:
    assert region_centres_mm(30.0) == {"anterior": 10.0, "middle": 0.0, "posterior": -10.0}
    assert tuple(region_centres_mm(30.0)) == ANATOMICAL_REGIONS


def test_healthy_heights_follow_the_rims_and_the_endplate_concavity() -> None:
    v = l1()
    assert 20.0 < v.height < 32.0 and 25.0 < v.depth < 40.0  # an adult L1 (mm)
    heights = regional_heights(v, fractured=False)
    assert heights == regional_heights(v, fractured=True)  # no fracture: drawn = healthy
    for region, a in region_centres_mm(v.depth).items():
        rim = v.height_post_rim + (v.height_ant_rim - v.height_post_rim) * (a + 0.5 * v.depth) / v.depth
        dip = 1.0 - (a / (0.5 * v.depth)) ** 2
        assert heights[region] == pytest.approx(rim - (v.concave_top + v.concave_bottom) * dip, abs=1e-4)


@pytest.mark.parametrize("morphology, expected", [
    ("wedge", {"anterior": 1.0, "middle": 0.5, "posterior": 0.0}),
    ("biconcave", {"anterior": 1.0 - (4.0 / 9.0) / 0.5625, "middle": 1.0, "posterior": 1.0 - (4.0 / 9.0) / 0.5625}),
    ("crush", {"anterior": 1.0, "middle": 0.925, "posterior": 0.85}),
])
def test_regional_losses_of_each_morphology(morphology: str, expected: dict[str, float]) -> None:
    ratio = 0.32
    v = l1(Fracture(morphology, ratio))
    pre, post = regional_heights(v, fractured=False), regional_heights(v, fractured=True)
    losses = {region: 1.0 - post[region] / pre[region] for region in ANATOMICAL_REGIONS}
    assert losses == pytest.approx({region: ratio * share for region, share in expected.items()}, abs=1e-5)
    assert max(losses.values()) == pytest.approx(ratio, abs=1e-5)  # the truth's loss_ratio is the largest region


def test_a_fracture_shrinks_the_body_about_its_mid_surface() -> None:
    v = l1(Fracture("crush", 0.45))
    a, left = np.float32(0.0), np.float32(0.0)
    top0, bottom0 = endplates(v, a, left, fractured=False)
    top1, bottom1 = endplates(v, a, left, fractured=True)
    assert float(top1 + bottom1) == pytest.approx(float(top0 + bottom0), abs=1e-4)
    assert float(top1 - bottom1) == pytest.approx(float(top0 - bottom0) * (1.0 - float(height_loss(v, a, left))),
                                                  abs=1e-4)


def test_height_loss_is_capped_and_zero_without_fracture() -> None:
    a = np.linspace(-20.0, 20.0, 9, dtype=np.float32)
    assert not height_loss(l1(), a, np.zeros_like(a)).any()
    crushed = height_loss(l1(Fracture("crush", 0.79)), a, np.zeros_like(a))
    assert crushed.max() <= 0.9 + 1e-6 and crushed.min() > 0.0


def test_posterior_elements_lie_behind_the_body() -> None:
    v = l1()
    low, high = posterior_box(v)
    assert high[1] < -0.5 * v.depth + 4.0  # pedicles start at the posterior wall (a = -D/2, + 3 mm and rounding)
    tip = v.canal_centre - v.canal_ap - v.lamina + 1.0 - v.spinous_len * math.cos(math.radians(v.spinous_deg))
    assert low[1] < tip  # the spinous process tip is inside the box
    assert high[2] == pytest.approx(-low[2], abs=1e-6)  # left/right symmetric
