"""evaluation.genant: one home for the Genant rule, region, grade and morphology names; nothing else imported."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from evaluation.genant import (
    ANATOMICAL_REGIONS,
    GENANT_GRADES,
    GENANT_RULE,
    GENANT_THRESHOLDS,
    GRADE_NAMES,
    MORPHOLOGIES,
    MORPHOLOGY_OF_REGION,
    genant_grade,
)
from tests.paths import REPO_ROOT


def grade_by_rule_text(loss: float) -> int:
    """Read the grade off the written rule (``"<0.20 -> 0, <0.25 -> 1, <=0.40 -> 2, else 3"``)."""
    for clause in GENANT_RULE.split(", "):
        match = re.fullmatch(r"(<=?)(\d\.\d+) -> (\d)", clause)
        if match is None:
            return int(re.fullmatch(r"else (\d)", clause).group(1))
        operator, bound, grade = match.groups()
        if (loss < float(bound)) if operator == "<" else (loss <= float(bound)):
            return int(grade)
    raise AssertionError(f"rule {GENANT_RULE!r} gives no grade for {loss}")


def test_the_written_rule_is_the_rule_the_code_applies() -> None:
    thresholds = np.array(GENANT_THRESHOLDS)
    losses = np.concatenate([np.linspace(0.0, 0.8, 801), thresholds, thresholds - 1e-9, thresholds + 1e-9])
    assert all(grade_by_rule_text(float(x)) == genant_grade(float(x)) for x in losses)


def test_names() -> None:
    assert ANATOMICAL_REGIONS == ("anterior", "middle", "posterior")
    assert set(GRADE_NAMES) == set(GENANT_GRADES) and GRADE_NAMES[0] == "normal" and GRADE_NAMES[3] == "severe"
    assert MORPHOLOGIES[0] == "none" and set(MORPHOLOGY_OF_REGION.values()) == set(MORPHOLOGIES[1:])
    assert tuple(MORPHOLOGY_OF_REGION) == ANATOMICAL_REGIONS


@pytest.mark.parametrize("module, forbidden", [
    ("evaluation.genant", "data"),  # a leaf: the phantoms import it without pulling in the project
    ("evaluation.phantom_truth", "data.phantoms"),  # scoring against the truth needs no generator
])
def test_imports_stay_low(module: str, forbidden: str) -> None:
    code = (f"import sys, {module}; loaded = [m for m in sys.modules if m == {forbidden!r} or "
            f"m.startswith({forbidden + '.'!r})]; print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, f"{module} loads {done.stdout.strip()} {done.stderr[-500:]}"
