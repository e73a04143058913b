"""Relative Height Loss of the Vertebra (RHLV; docs/design.md, 'RHLV'), vectorized over slices and columns.

Crop axes (docs/design.md, 'Straightened crops'): axis 0 superior -> inferior (height), axis 1 anterior ->
posterior, axis 2 right -> left. A *column* is a line of voxels along axis 0; its
height is its count of target voxels (``label == v``) times the axis-0 spacing.
The *axial height map* (A->P, R->L) holds every column's count. A plane decides how
columns are grouped into slices and thirds:

- ``sagittal``: slices ``[:, :, z]``; columns run A->P; thirds anterior / middle /
  posterior (``Pre`` / ``Mid`` / ``Post``);
- ``coronal``: slices ``[:, y, :]``; columns run R->L; thirds right / middle / left,
  reported in the same ``Pre`` / ``Mid`` / ``Post`` columns (as the reference
  implementation does), so grading reads either table. Lateral (scoliotic) wedges
  show up as a right/left asymmetry.

Measurement of one vertebra against a pseudo-healthy reference:

1. slices within +/- (extent // ``length_divisor``) of the original target's
   voxel-weighted centre slice (inclusive);
2. in each slice the reference's column extent is split into thirds;
3. *footprint*: a column is measured when the reference height is at least
   ``height_threshold`` x the reference's centre column (the voxel-weighted centre)
   and the original has target voxels there. The pseudo-healthy body decides which
   columns belong to the body, so the short anterior columns of a wedge count as
   height loss instead of being dropped as the rounded rim. (The reference
   implementation thresholds the original against its own centre column, which drops
   the anterior third of wedges with more than ~45 % anterior loss.)
4. per slice and region, when the original's tallest column is taller than the
   reference's, the reference heights are scaled up by that ratio;
5. H = mean measured column height over the slices of step 1;
   RHLV = (H_syn - H_ori) / H_syn per third and for the whole body.

The non-learned baseline (:func:`rhlv_neighbours_for_vertebra`) replaces the
synthesized vertebra by the same regions of the nearest healthy-looking neighbours
above and below in the same crop, linearly interpolated along the spine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.labels import VERTEBRA_NAMES, spine_rank
from data.morphology import remove_small_components
from data.planes import PLANES, plane_axes
from util.protocol import DEFAULT_PROTOCOL, check_protocol
from util.settings import FromOptions, option_values

RHLV_REGIONS = ("all", "pre", "mid", "post")  # whole body and its anterior, middle, posterior thirds
THIRDS = RHLV_REGIONS[1:]
REFERENCES = ("synthesized", "neighbours")

# Table columns (docs/design.md, 'RHLV table'); the first eight are the reference implementation's.
RHLV_COLUMNS = [
    "Vertebra", "Label", "Dataset", "All RHLV", "Pre RHLV", "Mid RHLV", "Post RHLV", "Relative Height Label",
    *[f"H_{which}_{region}_mm" for region in RHLV_REGIONS for which in ("syn", "ori")],
]
RHLV_FEATURES = ["Pre RHLV", "Mid RHLV", "Post RHLV"]


class RHLVError(ValueError):
    """A vertebra whose RHLV cannot be measured; the message says why."""


REFERENCE_MIN_COMPONENT_FRACTION = 0.0  # the published code counts every voxel of the label id


@dataclass(frozen=True)
class MeasureOptions(FromOptions):
    """The RHLV measurement settings, the one place of their defaults (docs/design.md, 'RHLV').

    height_threshold: measured columns reach this fraction of the reference's centre column (tau);
    length_divisor: slices within +/- extent // divisor of the centre slice; min_component_fraction:
    target islands under this fraction of its voxels are dropped; healthy_min_relative_height: the
    neighbour baseline's healthy-looking rule. ``protocol`` ``reference`` measures by the published
    code's rule (:mod:`evaluation.rhlv_reference`, synthesized reference only, no island removal).
    """

    plane: str = "sagittal"
    height_threshold: float = 0.7
    length_divisor: int = 5
    min_component_fraction: float = 0.05
    healthy_min_relative_height: float = 0.7
    protocol: str = DEFAULT_PROTOCOL

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        if self.plane not in PLANES:
            raise ValueError(f"plane {self.plane!r}: expected one of {PLANES}")
        if not 0.0 <= self.height_threshold <= 1.0:
            raise ValueError(f"height_threshold {self.height_threshold}: expected a fraction in [0, 1]")
        if self.length_divisor < 1:
            raise ValueError(f"length_divisor {self.length_divisor}: expected an integer >= 1")
        if not 0.0 <= self.min_component_fraction < 1.0:
            raise ValueError(f"min_component_fraction {self.min_component_fraction}: expected a fraction in [0, 1)")

    @classmethod
    def from_options(cls, options: Any, **overrides: Any) -> MeasureOptions:
        """The settings of a run from its flags; ``--min_component_fraction`` left out (``None``) means 0.05,
        or 0 (every voxel counts) under ``--protocol reference``."""
        values = dict(option_values(options))
        if values.get("min_component_fraction") is None and "min_component_fraction" not in overrides:
            if values.get("protocol") == "reference":
                overrides["min_component_fraction"] = REFERENCE_MIN_COMPONENT_FRACTION
        return super().from_options(values, **overrides)


@dataclass(frozen=True)
class TargetHeights:
    """Target voxel counts per (A->P, R->L) column of a crop, after removing stray islands."""

    counts: np.ndarray  # (D1, D2) int32 voxels along axis 0
    bbox: tuple[slice, slice, slice]  # bounding box of the kept target voxels (crop voxels)
    shape: tuple[int, int, int]  # crop shape

    @property
    def touches_border(self) -> bool:
        """True when the body reaches a face of the crop (it may be cut)."""
        return any(s.start == 0 or s.stop == n for s, n in zip(self.bbox, self.shape))


@dataclass(frozen=True)
class ColumnMeasure:
    """Per-(slice, column) quantities of one plane; arrays are (n_slices, n_columns)."""

    reference_regional: np.ndarray  # reference heights (voxels), scaled per slice and third
    reference_whole: np.ndarray  # reference heights (voxels), scaled per slice
    keep: np.ndarray  # bool: measured columns (the footprint)
    region: np.ndarray  # int8: 0 pre, 1 mid, 2 post (thirds of the reference's extent)


@dataclass(frozen=True)
class RHLVResult:
    """RHLV of one vertebra, with the heights behind it.

    ``loss_map`` is axial (A->P, R->L) like the crop's axes 1 and 2: the relative
    height loss of every measured column (all slices, not only the central ones),
    NaN elsewhere.
    """

    label: int
    plane: str
    rhlv: dict[str, float]
    height_syn_mm: dict[str, float]
    height_ori_mm: dict[str, float]
    relative_height_label: float
    slab: tuple[int, int]  # first and last slice index (inclusive) along the plane's slice axis
    loss_map: np.ndarray
    spacing_mm: tuple[float, float, float]
    reference: str = "synthesized"
    reference_labels: tuple[int, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """Anatomical name of the vertebra (``"L1"``)."""
        return VERTEBRA_NAMES.get(self.label, str(self.label))

    @property
    def max_regional_rhlv(self) -> float:
        """Largest of the anterior, middle and posterior RHLV (comparable to a truth ``loss_ratio``)."""
        return max(self.rhlv[region] for region in THIRDS)

    def table_values(self) -> dict[str, float]:
        """The measured columns of an RHLV table row (everything but Vertebra, Label, Dataset)."""
        values = {f"{region.capitalize()} RHLV": self.rhlv[region] for region in RHLV_REGIONS}
        values["Relative Height Label"] = self.relative_height_label
        for region in RHLV_REGIONS:
            values[f"H_syn_{region}_mm"] = self.height_syn_mm[region]
            values[f"H_ori_{region}_mm"] = self.height_ori_mm[region]
        return values


def _spacing3(spacing_mm: float | Sequence[float]) -> tuple[float, float, float]:
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    if not np.all(spacing > 0):
        raise ValueError(f"spacing_mm {spacing_mm}: voxel sizes must be positive")
    return tuple(float(s) for s in spacing)


def target_heights(label_map: np.ndarray, label: int,
                   min_component_fraction: float = MeasureOptions.min_component_fraction) -> TargetHeights | None:
    """Column counts of ``label_map == label`` over (A->P, R->L); ``None`` when the label is absent.

    Connected components (full connectivity) smaller than ``min_component_fraction`` of
    the target's voxels (stray islands of a segmentation) are dropped first.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise RHLVError(f"label map has shape {label_map.shape}; expected a 3D crop (S->I, A->P, R->L)")
    mask = label_map == label
    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    if rows.size == 0:
        return None
    block = mask[rows[0]: rows[-1] + 1]
    ap = np.flatnonzero(block.any(axis=(0, 2)))
    lr = np.flatnonzero(block.any(axis=(0, 1)))
    body = block[:, ap[0]: ap[-1] + 1, lr[0]: lr[-1] + 1]
    offset = (int(rows[0]), int(ap[0]), int(lr[0]))
    if min_component_fraction > 0:
        min_size = int(np.ceil(min_component_fraction * np.count_nonzero(body)))
        body = remove_small_components(body, min_size)
    # Bounding box of what was kept (islands may have stretched the first one).
    extents = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    bbox = tuple(slice(o + int(e[0]), o + int(e[-1]) + 1) for o, e in zip(offset, extents))
    counts = np.zeros(label_map.shape[1:], dtype=np.int32)
    counts[offset[1]: offset[1] + body.shape[1], offset[2]: offset[2] + body.shape[2]] = body.sum(axis=0)
    return TargetHeights(counts, bbox, tuple(label_map.shape))


def plane_heights(counts: np.ndarray, plane: str) -> np.ndarray:
    """Arrange an axial (A->P, R->L) map as (slices, columns) of ``plane`` (float64)."""
    return np.moveaxis(np.asarray(counts, dtype=np.float64), plane_axes(plane).axial_slice_axis, 0)


def plane_to_axial(values: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`plane_heights`: (slices, columns) back to (A->P, R->L)."""
    return np.moveaxis(values, 0, plane_axes(plane).axial_slice_axis)


def central_slab(heights: np.ndarray, length_divisor: int) -> tuple[int, int]:
    """First and last slice (inclusive) within +/- (extent // length_divisor) of the weighted centre slice."""
    per_slice = heights.sum(axis=1)
    present = np.flatnonzero(per_slice)
    if present.size == 0:
        raise RHLVError("target has no voxels")
    centre = int(np.floor((np.arange(per_slice.size) * per_slice).sum() / per_slice.sum()))
    half = int(present[-1] - present[0]) // int(length_divisor)
    return max(centre - half, 0), min(centre + half, per_slice.size - 1)


def measure_columns(reference: np.ndarray, original: np.ndarray, height_threshold: float) -> ColumnMeasure:
    """Footprint, thirds and scaled reference heights for (slices, columns) height maps (voxels)."""
    n_slices, n_columns = reference.shape
    columns = np.arange(n_columns)
    reference_on = reference > 0
    present = reference_on.any(axis=1) & (original > 0).any(axis=1)
    first = np.argmax(reference_on, axis=1)
    last = n_columns - 1 - np.argmax(reference_on[:, ::-1], axis=1)
    width = (last - first + 1).astype(np.float64)
    # Thirds of the reference's extent; columns outside it join the nearest third.
    region = np.clip(np.floor(3.0 * (columns[None, :] - first[:, None] + 0.5) / width[:, None]), 0, 2).astype(np.int8)

    totals = reference.sum(axis=1)
    centre_column = np.rint((reference * columns).sum(axis=1) / np.maximum(totals, 1.0)).astype(np.intp)
    centre_height = reference[np.arange(n_slices), centre_column]
    keep = present[:, None] & reference_on & (original > 0) & (reference >= height_threshold * centre_height[:, None])

    in_third = region[None, :, :] == np.arange(3, dtype=np.int8)[:, None, None]  # (3, S, C)
    reference_max = np.where(in_third, reference[None], 0.0).max(axis=2)  # (3, S)
    original_max = np.where(in_third, original[None], 0.0).max(axis=2)
    third_scale = np.where((original_max > reference_max) & (reference_max > 0),
                           original_max / np.maximum(reference_max, 1e-12), 1.0)
    regional_scale = np.take_along_axis(third_scale.T, region.astype(np.intp), axis=1)
    whole_reference_max, whole_original_max = reference.max(axis=1), original.max(axis=1)
    whole_scale = np.where((whole_original_max > whole_reference_max) & (whole_reference_max > 0),
                           whole_original_max / np.maximum(whole_reference_max, 1e-12), 1.0)
    return ColumnMeasure(reference * regional_scale, reference * whole_scale[:, None], keep, region)


def regional_heights(measure: ColumnMeasure, original: np.ndarray,
                     slab: tuple[int, int]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean measured reference and original column heights (voxels) per region over the slab slices."""
    in_slab = np.zeros(original.shape[0], dtype=bool)
    in_slab[slab[0]: slab[1] + 1] = True
    keep = measure.keep & in_slab[:, None]
    if not keep.any():
        raise RHLVError(f"no measurable columns in slices {slab[0]}-{slab[1]} (reference and original do not overlap)")
    reference_mean = {"all": float(measure.reference_whole[keep].mean())}
    original_mean = {"all": float(original[keep].mean())}
    for index, region in enumerate(THIRDS):
        selected = keep & (measure.region == index)
        if not selected.any():
            raise RHLVError(f"no measurable columns in the {region} third of slices {slab[0]}-{slab[1]}")
        reference_mean[region] = float(measure.reference_regional[selected].mean())
        original_mean[region] = float(original[selected].mean())
    return reference_mean, original_mean


def _relative_loss(reference: dict[str, float], original: dict[str, float]) -> dict[str, float]:
    return {region: (reference[region] - original[region]) / reference[region] for region in RHLV_REGIONS}


def _relative_height(original: dict[str, float]) -> float:
    heights = [original[region] for region in THIRDS]
    return min(heights) / max(heights)


def _to_mm(heights_voxels: dict[str, float], spacing: tuple[float, float, float]) -> dict[str, float]:
    return {region: value * spacing[0] for region, value in heights_voxels.items()}


def _require_target(label_map: np.ndarray, label: int, what: str, options: MeasureOptions) -> TargetHeights:
    heights = target_heights(label_map, label, options.min_component_fraction)
    if heights is None:
        raise RHLVError(f"{what} label map has no voxels of label {label}")
    return heights


def rhlv_for_vertebra(original_label_map: np.ndarray, synthesized_label_map: np.ndarray, label: int,
                      spacing_mm: float | Sequence[float] = 1.0, plane: str = "sagittal",
                      height_threshold: float = MeasureOptions.height_threshold,
                      length_divisor: int = MeasureOptions.length_divisor,
                      min_component_fraction: float = MeasureOptions.min_component_fraction) -> RHLVResult:
    """RHLV of vertebra ``label`` from its original and synthesized (pseudo-healthy) label crops.

    Both maps are (S->I, A->P, R->L) crops on the same grid; ``spacing_mm`` is the voxel
    size (scalar or per axis; only axis 0 scales heights). Raises :class:`RHLVError` when
    either map lacks the target or the two do not overlap.
    """
    options = MeasureOptions(plane, height_threshold, length_divisor, min_component_fraction)
    spacing = _spacing3(spacing_mm)
    if np.shape(original_label_map) != np.shape(synthesized_label_map):
        raise RHLVError(f"original {np.shape(original_label_map)} and synthesized "
                        f"{np.shape(synthesized_label_map)} label maps differ in shape")
    original = plane_heights(_require_target(original_label_map, label, "original", options).counts, plane)
    synthesized = plane_heights(_require_target(synthesized_label_map, label, "synthesized", options).counts, plane)
    slab = central_slab(original, length_divisor)
    measure = measure_columns(synthesized, original, height_threshold)
    reference_mean, original_mean = regional_heights(measure, original, slab)
    loss = np.where(measure.keep, 1.0 - original / np.where(measure.keep, measure.reference_regional, 1.0), np.nan)
    return RHLVResult(
        label=int(label), plane=plane, rhlv=_relative_loss(reference_mean, original_mean),
        height_syn_mm=_to_mm(reference_mean, spacing), height_ori_mm=_to_mm(original_mean, spacing),
        relative_height_label=_relative_height(original_mean), slab=slab,
        loss_map=plane_to_axial(loss, plane).astype(np.float32), spacing_mm=spacing,
    )


@dataclass(frozen=True)
class _SelfMeasure:
    heights: np.ndarray  # (slices, columns) voxels
    measure: ColumnMeasure
    slab: tuple[int, int]
    mean: dict[str, float]  # voxels per region


def _measure_self(target: TargetHeights, options: MeasureOptions) -> _SelfMeasure:
    """Regional heights of a body against its own footprint (the reference implementation's rule)."""
    heights = plane_heights(target.counts, options.plane)
    slab = central_slab(heights, options.length_divisor)
    measure = measure_columns(heights, heights, options.height_threshold)
    mean, _ = regional_heights(measure, heights, slab)
    return _SelfMeasure(heights, measure, slab, mean)


def _ordered_candidates(label: int, direction: int) -> list[int]:
    """VerSe labels cranial (direction -1) or caudal (+1) of ``label``, nearest first."""
    rank = spine_rank(label)
    others = [c for c in VERTEBRA_NAMES if (spine_rank(c) - rank) * direction > 0]
    return sorted(others, key=lambda c: abs(spine_rank(c) - rank))


def _nearest_healthy_neighbour(label_map: np.ndarray, label: int, direction: int, target_tallest: float,
                               options: MeasureOptions) -> tuple[int, dict[str, float]] | None:
    """Nearest neighbour in ``direction`` that is complete in the crop and healthy-looking.

    With r = ``options.healthy_min_relative_height``: the smallest of its regional heights
    is at least r x its largest (no wedge or biconcave deformity), and its whole-body
    height is at least r x the target's tallest region (no crush, and not a sliver cut
    by the border of the scan). The grades are never read.
    """
    ratio = options.healthy_min_relative_height
    for candidate in _ordered_candidates(label, direction):
        heights = target_heights(label_map, candidate, options.min_component_fraction)
        if heights is None or heights.touches_border:
            continue
        try:
            own = _measure_self(heights, options)
        except RHLVError:
            continue
        if _relative_height(own.mean) >= ratio and own.mean["all"] >= ratio * target_tallest:
            return candidate, own.mean
    return None


def rhlv_neighbours_for_vertebra(original_label_map: np.ndarray, label: int,
                                 spacing_mm: float | Sequence[float] = 1.0, plane: str = "sagittal",
                                 height_threshold: float = MeasureOptions.height_threshold,
                                 length_divisor: int = MeasureOptions.length_divisor,
                                 min_component_fraction: float = MeasureOptions.min_component_fraction,
                                 healthy_min_relative_height: float = MeasureOptions.healthy_min_relative_height
                                 ) -> RHLVResult:
    """Non-learned baseline: pseudo-healthy regional heights interpolated from the neighbours.

    The nearest complete, healthy-looking vertebrae above and below in the same crop are
    measured like the target (own footprint, own thirds, own central slices); each
    region's pseudo-healthy height is their linear interpolation along the spine
    (weights by :func:`data.labels.spine_rank` distance), or the one available side.
    """
    options = MeasureOptions(plane, height_threshold, length_divisor, min_component_fraction,
                             healthy_min_relative_height)
    spacing = _spacing3(spacing_mm)
    own = _measure_self(_require_target(original_label_map, label, "original", options), options)
    tallest = max(own.mean[region] for region in THIRDS)
    above = _nearest_healthy_neighbour(original_label_map, label, -1, tallest, options)
    below = _nearest_healthy_neighbour(original_label_map, label, +1, tallest, options)
    if above is None and below is None:
        raise RHLVError(f"no complete, healthy-looking neighbour of label {label} in the crop")
    if above is None or below is None:
        neighbour_label, reference_mean = above or below
        used: tuple[int, ...] = (neighbour_label,)
    else:
        distance_above = spine_rank(label) - spine_rank(above[0])
        distance_below = spine_rank(below[0]) - spine_rank(label)
        weight_above = distance_below / (distance_above + distance_below)
        reference_mean = {region: weight_above * above[1][region] + (1 - weight_above) * below[1][region]
                          for region in RHLV_REGIONS}
        used = (above[0], below[0])
    regional_reference = np.array([reference_mean[region] for region in THIRDS])[own.measure.region]
    loss = np.where(own.measure.keep, 1.0 - own.heights / regional_reference, np.nan)
    return RHLVResult(
        label=int(label), plane=plane, rhlv=_relative_loss(reference_mean, own.mean),
        height_syn_mm=_to_mm(reference_mean, spacing), height_ori_mm=_to_mm(own.mean, spacing),
        relative_height_label=_relative_height(own.mean), slab=own.slab,
        loss_map=plane_to_axial(loss, plane).astype(np.float32), spacing_mm=spacing,
        reference="neighbours", reference_labels=used,
    )
