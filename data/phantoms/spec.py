"""What defines a phantom case: the fracture, the case specification, the generated case, spec checks.

``spacing_mm`` and ``shape`` of a ``CaseSpec`` are per *output array axis* (the axis order of its
``orientation``); unset fields are drawn from the seed in ``data.phantoms.case``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.labels import VERTEBRA_NAMES, spine_rank, vertebra_name
from evaluation.genant import MORPHOLOGIES

DEFAULT_LABELS: tuple[int, ...] = tuple(range(17, 25))  # T10-L5
ORIENTATIONS = ("RAS", "LPS", "LAS", "RPS", "LPI", "RAI", "PIR", "ASL", "PIL", "AIL", "IPL", "SPR", "LIP", "RSA")


@dataclass(frozen=True)
class Fracture:
    """A fracture of one vertebral body: morphology and largest regional height-loss ratio (0-1)."""

    morphology: str
    loss_ratio: float

    def __post_init__(self) -> None:
        if self.morphology not in MORPHOLOGIES[1:]:
            raise ValueError(f"fracture morphology {self.morphology!r}; expected one of {MORPHOLOGIES[1:]}")
        if not 0.0 < self.loss_ratio < 0.8:
            raise ValueError(f"fracture loss ratio {self.loss_ratio}; expected 0 < loss < 0.8")


@dataclass(frozen=True)
class CaseSpec:
    """Everything that defines one phantom case; unset fields are drawn from ``seed``.

    ``spacing_mm`` and ``shape`` are per *output array axis* (the axis order of
    ``orientation``). ``shape=None`` fits the field of view to the anatomy plus
    ``margin_mm``; a given shape is centred on the torso (vertebrae outside it are
    cut and flagged ``truncated``).
    """

    case: str
    seed: int
    labels: tuple[int, ...] = DEFAULT_LABELS
    fractures: Mapping[int, Fracture] = field(default_factory=dict)
    orientation: str | None = None
    spacing_mm: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None
    noise_hu: float | None = None
    margin_mm: float = 12.0


@dataclass
class PhantomCase:
    """A generated case: int16 HU CT, uint8 VerSe-label mask (same grid), affine and truth dict."""

    case: str
    ct: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    truth: dict[str, Any]


def parse_vertebra_range(text: str) -> tuple[int, ...]:
    """VerSe labels of a range such as ``"T10-L5"``, ``"C1-L5"`` or ``"L1"`` (cranial to caudal)."""
    by_name = {name: label for label, name in VERTEBRA_NAMES.items()}
    first, _, last = text.strip().upper().partition("-")
    last = last or first
    if first not in by_name or last not in by_name:
        raise ValueError(f"vertebra range {text!r}: use names such as T10-L5 (known: C1-C7, T1-T13, L1-L6)")
    ordered = sorted(VERTEBRA_NAMES, key=spine_rank)
    start, stop = ordered.index(by_name[first]), ordered.index(by_name[last])
    if stop < start:
        raise ValueError(f"vertebra range {text!r}: the first vertebra must be cranial to the last")
    labels = [lab for lab in ordered[start : stop + 1] if lab not in (25, 28) or lab in (by_name[first], by_name[last])]
    return tuple(labels)


def _valid_axis_codes(codes: str) -> bool:
    """Whether ``codes`` names one of R/L, A/P and S/I per axis (e.g. ``"PIR"``)."""
    pairs = [{"R", "L"}, {"A", "P"}, {"S", "I"}]
    used = sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in str(codes).upper())
    return len(codes) == 3 and used == [0, 1, 2] and str(codes).isupper()


def check_spec(spec: CaseSpec) -> None:
    """Reject impossible specifications with a one-line reason."""
    for label in spec.labels:
        vertebra_name(label)
    ranks = [spine_rank(label) for label in spec.labels]
    if ranks != sorted(ranks) or len(set(ranks)) != len(ranks):
        raise ValueError(f"{spec.case}: labels {spec.labels} must be distinct and ordered cranial to caudal")
    unknown = set(spec.fractures) - set(spec.labels)
    if unknown:
        raise ValueError(f"{spec.case}: fractures given for labels {sorted(unknown)} that are not in the case")
    if spec.orientation is not None and not _valid_axis_codes(spec.orientation):
        raise ValueError(f"{spec.case}: orientation {spec.orientation!r} is not three axis codes such as RAS or PIR")
    if spec.spacing_mm is not None and (len(spec.spacing_mm) != 3 or min(spec.spacing_mm) <= 0):
        raise ValueError(f"{spec.case}: spacing {spec.spacing_mm} must be three positive numbers (mm)")
    if spec.shape is not None and (len(spec.shape) != 3 or min(spec.shape) < 8):
        raise ValueError(f"{spec.case}: shape {spec.shape} must be three sizes of at least 8 voxels")

