"""Genant's semi-quantitative grading: region names, grade names, thresholds, suggested morphology.

The one copy of the rule (docs/design.md, 'Genant thresholds'). It imports nothing of the project,
so the phantom generator (``data.phantoms``), ``evaluation.phantom_truth``, ``pipeline.predict`` and
the plots all use it without pulling in the rest of ``evaluation``.

A vertebral body has three regions along its antero-posterior extent (``ANATOMICAL_REGIONS``:
the anterior, middle and posterior thirds). A vertebra's grade follows its largest regional height
loss ``1 - post / pre``: below 20 % grade 0 (normal), 20-25 % grade 1 (mild), 25-40 % grade 2
(moderate), above 40 % grade 3 (severe). The region that lost most suggests the fracture's
morphology: anterior -> wedge, middle -> biconcave; a body that lost about as much everywhere
(smallest regional loss at least ``UNIFORM_LOSS_FRACTION`` of the largest), or most at the back,
-> crush.
"""

from __future__ import annotations

from collections.abc import Mapping

ANATOMICAL_REGIONS = ("anterior", "middle", "posterior")
GENANT_THRESHOLDS = (0.20, 0.25, 0.40)
GENANT_GRADES = (0, 1, 2, 3)
GRADE_NAMES = {0: "normal", 1: "mild", 2: "moderate", 3: "severe"}
MORPHOLOGIES = ("none", "wedge", "biconcave", "crush")
MORPHOLOGY_OF_REGION = dict(zip(ANATOMICAL_REGIONS, ("wedge", "biconcave", "crush")))
UNIFORM_LOSS_FRACTION = 0.75
GENANT_RULE = (f"<{GENANT_THRESHOLDS[0]:.2f} -> 0, <{GENANT_THRESHOLDS[1]:.2f} -> 1, "
               f"<={GENANT_THRESHOLDS[2]:.2f} -> 2, else 3")


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
