"""Phantom fixtures shared by the test suite (imported from conftest.py).

* ``phantom_cohort_dir``: a small cohort written once per session with
  ``data.phantoms.cohort.make_cohort`` (4 cases of T10-L5, 1 mm voxels, random
  orientations, every Genant grade, adjacent fractures in ``ph001``):
  ``<dir>/raw/<case>/{<case>.nii.gz,<case>_msk.nii.gz,<case>_truth.json}`` and
  ``<dir>/vertebra_data.json``.
* ``make_test_phantom(...)``: one case with chosen vertebrae, fractures,
  orientation and spacing, optionally written to disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from data.phantoms.case import generate_case, write_case
from data.phantoms.cohort import make_cohort
from data.phantoms.spec import CaseSpec, Fracture, PhantomCase

PHANTOM_COHORT_CASES = 4
PHANTOM_COHORT_SEED = 7
PHANTOM_COHORT_SPACING_MM = (1.0, 1.0, 1.0)


def make_test_phantom(
    out: str | Path | None = None,
    *,
    case: str = "phtest",
    labels: tuple[int, ...] = (19, 20, 21, 22),
    fractures: Mapping[int, tuple[str, float]] | None = None,
    orientation: str = "RAS",
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    noise_hu: float | None = 10.0,
    margin_mm: float = 8.0,
    shape: tuple[int, int, int] | None = None,
) -> PhantomCase:
    """Generate one phantom case (and write it under ``out/raw/<case>/`` when ``out`` is given).

    ``fractures`` maps a VerSe label to ``(morphology, loss_ratio)``, e.g.
    ``{20: ("wedge", 0.3)}`` (grade 2). ``spacing_mm`` and ``shape`` are per output
    array axis. The truth dict is ``case.truth`` (the keys of docs/design.md, 'Phantom truth', plus frames, see
    ``data.phantoms``).
    """
    spec = CaseSpec(
        case=case,
        seed=seed,
        labels=tuple(labels),
        fractures={label: Fracture(m, r) for label, (m, r) in (fractures or {}).items()},
        orientation=orientation,
        spacing_mm=tuple(spacing_mm),
        shape=shape,
        noise_hu=noise_hu,
        margin_mm=margin_mm,
    )
    phantom = generate_case(spec)
    if out is not None:
        write_case(phantom, out)
    return phantom


@pytest.fixture(scope="session")
def phantom_cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-case phantom cohort (raw cases, truth files and ``vertebra_data.json``), written once per session."""
    root = tmp_path_factory.mktemp("phantom_cohort")
    _, failures = make_cohort(
        root, PHANTOM_COHORT_CASES, PHANTOM_COHORT_SEED, progress=False, spacing_mm=PHANTOM_COHORT_SPACING_MM,
        margin_mm=8.0,
    )
    assert not failures, failures
    return root
