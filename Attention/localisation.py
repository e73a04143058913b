"""Where an attention map points: its mass on the target vertebra's body, its peak, its total mass.

For a map ``cam`` (any shape, values >= 0, e.g. a crop's (S->I, A->P, R->L) volume or one sagittal
slice) and the boolean target mask of the same shape (the target label in the label crop), the
target body is the mask dilated by ``slack_voxels`` voxels (2 by default: a map at the body's border
still counts). :func:`localise` returns

- ``mass_share``: the map's mass inside the target body over its total mass (``None`` for an all-zero
  map); a uniform map gives the body's volume fraction, ``body_fraction``;
- ``peak_in_target``: whether the map's maximum (its first occurrence) lies in the target body;
- ``mean_value``: the map's mean value over the whole array (a map of ones everywhere gives 1); for
  a healthy vertebra, the smaller the better (the generator's attention input is 1 - CAM).

The first two are the measure for fractured vertebrae, the third for healthy ones. A map that marks
every fracture of the crop (``grad_CAM_3d_sagittal.py --windows vertebrae``) may rightly peak on a
fractured neighbour; given the mask of all fractured bodies in the crop (the target's included),
:func:`localise` also returns

- ``fracture_mass_share``: the map's mass on the fractured bodies (same slack) over its total mass;
- ``peak_on_fracture``: whether its maximum lies on one of them.

:func:`summarise` aggregates per-vertebra records, overall and per morphology.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation, generate_binary_structure

DEFAULT_SLACK_VOXELS = 2
TARGET_WINDOW_TITLE = "target's own window"  # how summaries name the maps of the targets' own view windows
LOCALISATION_FILE = "localisation.json"  # written beside the maps by Attention/grad_CAM_3d_sagittal.py


@dataclass(frozen=True)
class Localisation:
    """Localisation of one map; see the module docstring for the fields."""

    mass_share: float | None
    peak_in_target: bool | None
    mean_value: float
    body_fraction: float
    fracture_mass_share: float | None = None
    peak_on_fracture: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_body(target: np.ndarray, slack_voxels: int = DEFAULT_SLACK_VOXELS) -> np.ndarray:
    """The boolean ``target`` mask dilated by ``slack_voxels`` voxels (full connectivity, each step
    one voxel in every axis)."""
    target = np.asarray(target, dtype=bool)
    if slack_voxels <= 0 or not target.any():
        return target
    structure = generate_binary_structure(target.ndim, target.ndim)
    return binary_dilation(target, structure=structure, iterations=int(slack_voxels))


def localise(cam: np.ndarray, target: np.ndarray, slack_voxels: int = DEFAULT_SLACK_VOXELS,
             fractured: np.ndarray | None = None) -> Localisation:
    """Localisation of attention map ``cam`` on the boolean ``target`` mask (same shape) and, when the
    boolean mask of every ``fractured`` body of the crop is given, on the fractures."""
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0.0, None)
    target = np.asarray(target, dtype=bool)
    for name, mask in (("target", target), ("fractured", fractured)):
        if mask is not None and np.shape(mask) != cam.shape:
            raise ValueError(f"attention map of shape {cam.shape} does not match the {name} mask {np.shape(mask)}")
    body = target_body(target, slack_voxels)
    total = float(cam.sum())
    body_fraction = float(body.mean()) if body.size else 0.0
    if total <= 0.0:
        return Localisation(None, None, 0.0, body_fraction)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    fracture_share = peak_on_fracture = None
    if fractured is not None:
        fracture_bodies = target_body(fractured, slack_voxels)
        fracture_share, peak_on_fracture = float(cam[fracture_bodies].sum()) / total, bool(fracture_bodies[peak])
    return Localisation(float(cam[body].sum()) / total, bool(body[peak]), float(cam.mean()), body_fraction,
                        fracture_share, peak_on_fracture)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Summary of records holding ``mass_share``, ``peak_in_target``, ``mean_value`` and ``fractured``
    (``None``: unknown): for fractured vertebrae the mean mass share and the share of peaks in the
    target; for healthy ones the mean map value; with no truth (``fractured`` None) all three over all."""
    records = list(records)
    fractured = [r for r in records if r.get("fractured") is True]
    healthy = [r for r in records if r.get("fractured") is False]
    unknown = [r for r in records if r.get("fractured") is None]
    summary: dict[str, Any] = {"n": len(records)}
    if fractured:
        peaks = [r["peak_in_target"] for r in fractured if r["peak_in_target"] is not None]
        summary["fractured"] = {"n": len(fractured), "mean_mass_share": _mean(r["mass_share"] for r in fractured),
                                "peak_in_target": int(sum(peaks)),
                                "peak_in_target_fraction": float(np.mean(peaks)) if peaks else None}
        on_fracture = [r["peak_on_fracture"] for r in fractured if r.get("peak_on_fracture") is not None]
        if on_fracture:
            summary["fractured"].update({
                "mean_fracture_mass_share": _mean(r.get("fracture_mass_share") for r in fractured),
                "peak_on_fracture": int(sum(on_fracture)), "peak_on_fracture_fraction": float(np.mean(on_fracture))})
    if healthy:
        summary["healthy"] = {"n": len(healthy), "mean_value": _mean(r["mean_value"] for r in healthy)}
    if unknown:
        peaks = [r["peak_in_target"] for r in unknown if r["peak_in_target"] is not None]
        summary["unknown"] = {"n": len(unknown), "mean_mass_share": _mean(r["mass_share"] for r in unknown),
                              "peak_in_target_fraction": float(np.mean(peaks)) if peaks else None,
                              "mean_value": _mean(r["mean_value"] for r in unknown)}
    return summary


def summarise(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``aggregate`` overall and per ``morphology`` (records without one are only in the overall)."""
    morphologies = sorted({r["morphology"] for r in records.values() if r.get("morphology")})
    return {"overall": aggregate(records.values()),
            "by_morphology": {m: aggregate(r for r in records.values() if r.get("morphology") == m)
                              for m in morphologies}}


def summary_lines(summary: Mapping[str, Any], what: str = "attention localisation") -> list[str]:
    """Human-readable lines of a ``summarise`` result, each starting with ``what``."""
    lines = []
    for name, part in [("all", summary["overall"]), *summary["by_morphology"].items()]:
        text = [f"{name} ({part['n']})"]
        if "fractured" in part:
            f = part["fractured"]
            text.append(f"fractured: peak in target {f['peak_in_target']}/{f['n']}, "
                        f"mean mass share {_fmt(f['mean_mass_share'])}")
            if "peak_on_fracture" in f:
                text.append(f"peak on a fractured body (target or neighbour) {f['peak_on_fracture']}/{f['n']}, "
                            f"mean mass share on fractured bodies {_fmt(f['mean_fracture_mass_share'])}")
        if "healthy" in part:
            text.append(f"healthy: mean map value {_fmt(part['healthy']['mean_value'])}")
        if "unknown" in part:
            u = part["unknown"]
            text.append(f"no truth: mean mass share {_fmt(u['mean_mass_share'])}, peak in target "
                        f"{_fmt(u['peak_in_target_fraction'])}, mean map value {_fmt(u['mean_value'])}")
        lines.append(f"{what}, " + "; ".join(text))
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


__all__ = ["DEFAULT_SLACK_VOXELS", "LOCALISATION_FILE", "TARGET_WINDOW_TITLE", "Localisation", "aggregate", "localise",
           "summarise", "summary_lines", "target_body"]
