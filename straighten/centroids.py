"""Vertebra centroid JSON (docs/design.md, 'Centroid JSON'): ``<root>/raw/<case>/<case>.json``.

A list ordered by label of ``{"label", "X", "Y", "Z"}`` (whole-vertebra centroid in voxel
indices of the mask array, the reference implementation's format) plus ``"world"`` (the same
point in RAS mm), the body centroid (``"body_voxel"``, ``"body_world"``), the volume and the
border flags: ``"cut_by_border"`` (touches the border and is much smaller than its neighbours)
and ``"status"`` (``ok``, ``cut_by_border`` or ``too_small``). Flagged vertebrae are listed,
never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.image_io import CaseFiles, list_cases, load_mask, world_to_voxel
from straighten.spine import STATUS_CUT, StraightenError, Vertebra, build_spine_model, measure_vertebrae
from util.fileio import write_json


def _rounded(values: np.ndarray, digits: int = 4) -> list[float]:
    return [round(float(x), digits) for x in values]


def vertebra_record(vertebra: Vertebra, affine: np.ndarray) -> dict[str, Any]:
    """One entry of the centroid JSON (docs/design.md, 'Centroid JSON') for a measured vertebra."""
    record: dict[str, Any] = {
        "label": vertebra.label,
        "X": float(vertebra.centroid_voxel[0]),
        "Y": float(vertebra.centroid_voxel[1]),
        "Z": float(vertebra.centroid_voxel[2]),
        "world": _rounded(vertebra.centroid_ras),
        "name": vertebra.name,
        "voxels": vertebra.voxel_count,
        "volume_mm3": round(vertebra.volume_mm3, 1),
        "touches_border": vertebra.touches_border,
        "cut_by_border": vertebra.status == STATUS_CUT,
        "status": vertebra.status,
    }
    if vertebra.reason:
        record["reason"] = vertebra.reason
    if vertebra.body_centroid_ras is not None:
        record["body_voxel"] = _rounded(world_to_voxel(affine, vertebra.body_centroid_ras[None])[0])
        record["body_world"] = _rounded(vertebra.body_centroid_ras)
    return record


def case_centroids(mask_path: str | Path, label_scheme: str = "verse") -> tuple[list[dict[str, Any]], list[str]]:
    """Centroid records (ordered by label) and notes for one vertebra mask file.

    Body centroids need at least one complete vertebra; without one the whole-vertebra
    centroids and flags are still returned, with a note.
    """
    mask = load_mask(mask_path, label_scheme)
    try:
        model = build_spine_model(mask)
        vertebrae, notes = model.vertebrae, list(model.notes)
    except StraightenError as err:
        vertebrae, notes = measure_vertebrae(mask)
        notes.append(f"no body centroids: {err}")
    records = [vertebra_record(v, mask.affine) for v in sorted(vertebrae, key=lambda v: v.label)]
    return records, notes


@dataclass
class CentroidResult:
    """Outcome of one case: the JSON written, flagged vertebrae and notes, or the error."""

    case: str
    path: Path | None = None
    flagged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def write_case_centroids(case: CaseFiles, label_scheme: str = "verse") -> CentroidResult:
    """Write ``<case>.json`` beside the case's mask (atomic); errors are returned, not raised."""
    if case.mask is None:
        return CentroidResult(case.case, error=f"{case.folder}: no vertebra mask found")
    try:
        records, notes = case_centroids(case.mask, label_scheme)
        write_json(case.centroids, records)
    except Exception as err:  # one bad case must not stop the batch; the report names it
        return CentroidResult(case.case, error=f"{type(err).__name__}: {err}")
    flagged = [f"{r['name']} ({r['status']})" for r in records if r["status"] != "ok"]
    return CentroidResult(case.case, case.centroids, flagged, notes)


def locate_root(root: str | Path, cases: list[str] | None = None, label_scheme: str = "verse") -> list[CentroidResult]:
    """Write the centroid JSON of every case under ``<root>/raw/`` (or only the named ``cases``)."""
    selected = [c for c in list_cases(root) if not cases or c.case in set(cases)]
    return [write_case_centroids(case, label_scheme) for case in selected]
