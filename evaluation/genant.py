"""Genant's semi-quantitative grades from relative height loss (the one copy of the thresholds).

A vertebra's grade follows its largest regional height loss (anterior, middle or posterior):
below 20 % grade 0 (normal), 20-25 % grade 1 (mild), 25-40 % grade 2 (moderate), above 40 % grade 3
(severe). The region that lost most suggests the fracture's morphology: anterior -> wedge,
middle -> biconcave; a body that lost about as much everywhere (smallest regional loss at least
``UNIFORM_LOSS_FRACTION`` of the largest), or most at the back, -> crush.
"""

from __future__ import annotations

from collections.abc import Mapping

GENANT_THRESHOLDS = (0.20, 0.25, 0.40)
GENANT_GRADES = (0, 1, 2, 3)
MORPHOLOGY_OF_REGION = {"anterior": "wedge", "middle": "biconcave", "posterior": "crush"}
UNIFORM_LOSS_FRACTION = 0.75


def genant_grade(loss_ratio: float) -> int:
    """Genant grade of a height-loss ratio: < 0.20 -> 0, < 0.25 -> 1, <= 0.40 -> 2, > 0.40 -> 3."""
    if loss_ratio < GENANT_THRESHOLDS[0]:
        return 0
    if loss_ratio < GENANT_THRESHOLDS[1]:
        return 1
    if loss_ratio <= GENANT_THRESHOLDS[2]:
        return 2
    return 3


def suggested_morphology(regional_loss: Mapping[str, float], grade: int) -> str:
    """``none`` for grade 0; ``crush`` for a uniform loss; else the morphology of the region that lost most."""
    if grade == 0:
        return "none"
    losses = [float(regional_loss[name]) for name in MORPHOLOGY_OF_REGION]
    if min(losses) >= UNIFORM_LOSS_FRACTION * max(losses):
        return "crush"
    region = max(MORPHOLOGY_OF_REGION, key=lambda name: regional_loss[name])
    return MORPHOLOGY_OF_REGION[region]
