"""A phantom cohort: case plan (every grade and morphology, adjacent fractures), split JSON, batch generation.

``make_cohort`` writes ``<out>/raw/<case>/`` per case (``data.phantoms.case.write_case``) and
``<out>/vertebra_data.json`` (docs/design.md, 'Split JSON'); it continues past a failing case and
writes the split only when every case succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from data.labels import split_key
from data.phantoms.case import generate_case, write_case
from data.phantoms.spec import DEFAULT_LABELS, CaseSpec, Fracture, check_spec
from util.fileio import write_json
from util.parallel import map_items

CASE_ERRORS = (ValueError, OSError, MemoryError)  # a bad case; anything else is a bug and stops the run


def case_id(index: int) -> str:
    """Case id of the ``index``-th phantom: ``ph000``, ``ph001``, ..."""
    return f"ph{index:03d}"


def case_seed(cohort_seed: int, index: int) -> int:
    """Seed of one case, derived from the cohort seed and the case index."""
    return int(np.random.SeedSequence([int(cohort_seed), int(index)]).generate_state(1)[0])


_GRADE_LOSS = {0: (0.05, 0.15), 1: (0.21, 0.24), 2: (0.27, 0.38), 3: (0.43, 0.58)}


def draw_loss_ratio(grade: int, rng: np.random.Generator) -> float:
    """A loss ratio well inside a Genant grade's range (≥ 1 % from every threshold)."""
    low, high = _GRADE_LOSS[grade]
    return round(float(rng.uniform(low, high)), 4)


def _fracture_positions(n: int, count: int, adjacent: bool, rng: np.random.Generator) -> list[int]:
    """Interior vertebra indices to fracture (never the first or last: they lack a neighbour)."""
    interior = list(range(1, n - 1))
    count = min(count, len(interior))
    if count == 0:
        return []
    if adjacent and count >= 2:
        start = int(rng.integers(1, n - 2))
        chosen = {start, start + 1}
        others = [i for i in interior if i not in chosen]
        chosen |= set(rng.choice(others, size=count - 2, replace=False).tolist()) if count > 2 else set()
        return sorted(chosen)
    for _ in range(50):
        chosen = sorted(rng.choice(interior, size=count, replace=False).tolist())
        if all(b - a > 1 for a, b in zip(chosen, chosen[1:])):
            return chosen
    return chosen


def plan_cohort(
    n_cases: int,
    seed: int,
    labels: Sequence[int] = DEFAULT_LABELS,
    orientation: str | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    noise_hu: float | None = None,
    margin_mm: float = 12.0,
    mild_deformity_rate: float = 0.15,
) -> list[CaseSpec]:
    """Specifications of a cohort: about a third of the vertebrae fractured, every grade and morphology present.

    Each case with at least five vertebrae gets grades 1, 2 and 3 (more fractures for
    longer spines); every third case (``ph001``, ``ph004``, ...) has two adjacent
    fractures; a few healthy vertebrae get a mild grade-0 deformity (loss 5-15 %).
    """
    if n_cases < 1:
        raise ValueError(f"cohort size {n_cases}: need at least one case")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**20]))
    labels = tuple(int(x) for x in labels)
    n = len(labels)
    morphology_deck: list[str] = []
    specs = []
    for index in range(n_cases):
        count = int(round(n * rng.uniform(0.28, 0.40)))
        count = max(count, min(3, n - 2)) if n >= 5 else max(1, count)
        positions = _fracture_positions(n, count, adjacent=(index % 3 == 1), rng=rng)
        grades = list(rng.permutation([1, 2, 3]))[: len(positions)]
        grades += [int(g) for g in rng.choice([1, 2, 3], size=len(positions) - len(grades), p=[0.3, 0.4, 0.3])]
        fractures: dict[int, Fracture] = {}
        for position, grade in zip(positions, rng.permutation(grades)):
            if not morphology_deck:
                morphology_deck = list(rng.permutation(["wedge", "wedge", "biconcave", "crush"]))
            fractures[labels[position]] = Fracture(str(morphology_deck.pop()), draw_loss_ratio(int(grade), rng))
        for position in range(1, n - 1):
            if labels[position] not in fractures and rng.uniform() < mild_deformity_rate:
                fractures[labels[position]] = Fracture(str(rng.choice(["wedge", "biconcave"])), draw_loss_ratio(0, rng))
        specs.append(
            CaseSpec(
                case=case_id(index), seed=case_seed(seed, index), labels=labels, fractures=fractures,
                orientation=orientation, spacing_mm=spacing_mm, shape=shape, noise_hu=noise_hu, margin_mm=margin_mm,
            )
        )
    check_spec(specs[0])
    return specs


def make_split(
    truths: Sequence[Mapping[str, Any]], seed: int, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> dict[str, dict[str, int]]:
    """Split JSON (docs/design.md, 'Split JSON') by case: ``{"train"|"val"|"test": {"<case>_<label>": grade}}``.

    Validation and test cases are taken preferably among cases holding every grade of
    the cohort, and only while the training cases keep every grade.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**21]))
    truths = sorted(truths, key=lambda t: t["case"])
    grades_of = {t["case"]: {v["grade"] for v in t["vertebrae"]} for t in truths}
    all_grades = set().union(*grades_of.values()) if grades_of else set()
    cases = [truths[i]["case"] for i in rng.permutation(len(truths))]
    n = len(cases)
    n_test = int(round(test_fraction * n)) if n >= 3 else 0
    n_val = int(round(val_fraction * n)) if n >= 3 else 0
    n_test, n_val = max(n_test, 1 if n >= 3 else 0), max(n_val, 1 if n >= 3 else 0)
    candidates = sorted(cases, key=lambda c: grades_of[c] != all_grades)  # complete cases first (stable)
    assignment = {c: "train" for c in cases}
    for split, wanted in (("test", n_test), ("val", n_val)):
        for case in candidates:
            if wanted == 0:
                break
            if assignment[case] != "train":
                continue
            remaining = set().union(*(grades_of[c] for c in cases if assignment[c] == "train" and c != case))
            if remaining >= all_grades:
                assignment[case] = split
                wanted -= 1
    split_json: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for truth in truths:
        for v in truth["vertebrae"]:
            split_json[assignment[truth["case"]]][split_key(truth["case"], v["label"])] = int(v["grade"])
    return split_json


def make_cohort(
    out: str | Path,
    n_cases: int,
    seed: int,
    workers: int = 1,
    progress: bool = True,
    **plan_options: Any,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Generate and write a phantom cohort under ``out`` (``raw/<case>/`` and ``vertebra_data.json``).

    Continues past a failing case; returns (truth dicts of written cases, one-line failure messages).
    The split JSON is written only when every case succeeded.
    """
    from tqdm import tqdm

    specs = plan_cohort(n_cases, seed, **plan_options)
    truths: list[dict[str, Any]] = []
    failures: list[str] = []
    bar = tqdm(total=len(specs), desc="phantoms", unit="case", disable=not progress)
    for result in map_items(partial(_generate_and_write, out=out), specs, workers, catch=CASE_ERRORS):
        if result.ok:
            truths.append(result.value)
        else:
            failures.append(f"{result.item.case}: {result.error}")
        bar.update(1)
    bar.close()
    if not failures:
        write_json(Path(out) / "vertebra_data.json", make_split(truths, seed))
    return sorted(truths, key=lambda t: t["case"]), failures


def _generate_and_write(spec: CaseSpec, out: str | Path) -> dict[str, Any]:
    """Generate and write one case; return its truth."""
    case = generate_case(spec)
    write_case(case, out)
    return case.truth
