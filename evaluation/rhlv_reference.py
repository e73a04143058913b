"""RHLV under ``--protocol reference``: the published code's column rule (docs/design.md, 'RHLV' and 'Two protocols').

Same inputs, axes and result type as :func:`evaluation.rhlv.rhlv_for_vertebra`; what
differs (each a protocol choice of the published code, reproduced):

- slices ``[c - n, c + n)`` (half-open) around ``c = int(mean slice of the original's
  voxels)``, ``n = extent // length_divisor``;
- thirds of the synthesized body's column extent at ``int(y_min + range / 3)`` and
  ``int(y_min + 2 range / 3)``; columns before the extent count as anterior, after it
  as posterior;
- each body keeps its own columns taller than ``height_threshold`` x its own centre
  column (``int`` of its voxel-weighted mean column), strictly greater; the
  synthesized centre column is scaled with the whole-slice ratio;
- scale ratios ``max_ori / (max_syn + 1e-6)`` (sagittal; the published coronal script
  divides without the 1e-6); RHLV ``(H_syn - H_ori) / (H_syn + 1e-6)``;
  Relative Height Label ``min / (max + 1e-6)``; a region without kept columns has
  mean height 0, as in the published code;
- no removal of small islands (every voxel of the label id counts).

Not reproduced (plain bugs): a slab start below slice 0 wraps around in the published
code (numpy negative index); here it is clamped to 0. A vertebra with no slice where
both maps hold the target gets an all-zero row there; here it is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.rhlv import (
    RHLV_REGIONS,
    THIRDS,
    MeasureOptions,
    RHLVError,
    RHLVResult,
    plane_heights,
    plane_to_axial,
    target_heights,
)

PUBLISHED_EPSILON = 1e-6  # the published code's guard in every ratio
RATIO_EPSILON = {"sagittal": PUBLISHED_EPSILON, "coronal": 0.0}  # scale-ratio guard of each published script


@dataclass(frozen=True)
class PublishedColumns:
    """Column selection of the published rule on (slices, columns) height maps (voxels)."""

    measured: np.ndarray  # (S,) bool: the target is in both maps in this slice
    region: np.ndarray  # (S, C) int8: 0 pre, 1 mid, 2 post
    reference_whole: np.ndarray  # (S, C) synthesized heights x whole-slice ratio
    reference_regional: np.ndarray  # (S, C) synthesized heights x their third's ratio
    keep_reference_whole: np.ndarray  # (S, C) bool
    keep_reference_regional: np.ndarray  # (S, C) bool
    keep_original: np.ndarray  # (S, C) bool


def published_thirds(first: int, last: int) -> tuple[int, int]:
    """Third boundaries of a column extent ``[first, last]`` as the published code computes them."""
    extent = last - first
    return int(first + extent / 3), int(first + 2 * extent / 3)


def published_slab(heights: np.ndarray, length_divisor: int) -> tuple[int, int]:
    """Half-open slice range ``[c - n, c + n)`` of the published code, start clamped to 0.

    ``heights`` is the original's (slices, columns) map; ``c`` is ``int`` of the mean
    slice index over its voxels and ``n = (last - first slice) // length_divisor``.
    """
    per_slice = heights.sum(axis=1)
    present = np.flatnonzero(per_slice)
    if present.size == 0:
        raise RHLVError("target has no voxels")
    centre = int((np.arange(per_slice.size) * per_slice).sum() / per_slice.sum())
    half = int(present[-1] - present[0]) // int(length_divisor)
    return max(centre - half, 0), min(centre + half, per_slice.size)


def _centre_height(heights: np.ndarray) -> float:
    """Height of the column at ``int`` of the voxel-weighted mean column of one slice."""
    columns = np.arange(heights.size)
    return float(heights[int((columns * heights).sum() / heights.sum())])


def _scale_ratio(original: np.ndarray, reference: np.ndarray, epsilon: float) -> float:
    if original.size == 0 or reference.size == 0 or not original.max() > reference.max():
        return 1.0
    return float(original.max() / (reference.max() + epsilon))


def published_regions(reference: np.ndarray) -> np.ndarray:
    """(slices, columns) int8 thirds 0/1/2 at the published ``int()`` boundaries of the synthesized extent."""
    region = np.full(reference.shape, 2, dtype=np.int8)
    for z in np.flatnonzero((reference > 0).any(axis=1)):
        body = np.flatnonzero(reference[z])
        one_third, two_third = published_thirds(int(body[0]), int(body[-1]))
        region[z, :one_third], region[z, one_third:two_third] = 0, 1
    return region


def published_columns(reference: np.ndarray, original: np.ndarray, height_threshold: float,
                      region: np.ndarray | None = None, ratio_epsilon: float = PUBLISHED_EPSILON) -> PublishedColumns:
    """Apply the published per-slice rule to (slices, columns) maps of the synthesized and original body.

    ``region`` (contiguous thirds per slice) defaults to :func:`published_regions`;
    ``ratio_epsilon`` is added to the synthesized maximum in the scale ratios.
    """
    n_slices, n_columns = reference.shape
    measured = (reference > 0).any(axis=1) & (original > 0).any(axis=1)
    region = published_regions(reference) if region is None else np.asarray(region, dtype=np.int8)
    reference_whole = np.zeros_like(reference)
    reference_regional = np.zeros_like(reference)
    keep_whole = np.zeros((n_slices, n_columns), dtype=bool)
    keep_regional = np.zeros_like(keep_whole)
    keep_original = np.zeros_like(keep_whole)
    for z in np.flatnonzero(measured):
        syn, ori = reference[z], original[z]
        whole_ratio = _scale_ratio(ori, syn, ratio_epsilon)
        reference_whole[z] = syn * whole_ratio
        for index in range(3):
            part = region[z] == index
            reference_regional[z, part] = syn[part] * _scale_ratio(ori[part], syn[part], ratio_epsilon)
        syn_floor = _centre_height(syn) * whole_ratio * height_threshold
        keep_whole[z] = reference_whole[z] > syn_floor
        keep_regional[z] = reference_regional[z] > syn_floor
        keep_original[z] = ori > _centre_height(ori) * height_threshold
    return PublishedColumns(measured, region, reference_whole, reference_regional, keep_whole, keep_regional,
                            keep_original)


def _mean_or_zero(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else 0.0


def published_means(columns: PublishedColumns, original: np.ndarray,
                    slab: tuple[int, int]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean kept synthesized and original heights (voxels) per region over the slab ``[start, stop)``."""
    rows = np.arange(slab[0], slab[1])
    rows = rows[columns.measured[rows]]
    if rows.size == 0:
        raise RHLVError(f"no slice in {slab[0]}-{slab[1] - 1} holds the target in both label maps")

    def pick(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return values[rows][keep[rows]]  # slice by slice, columns in order, as the published code extends

    reference_mean = {"all": _mean_or_zero(pick(columns.reference_whole, columns.keep_reference_whole))}
    original_mean = {"all": _mean_or_zero(pick(original, columns.keep_original))}
    for index, region in enumerate(THIRDS):
        in_third = columns.region == index
        reference_mean[region] = _mean_or_zero(pick(columns.reference_regional,
                                                    columns.keep_reference_regional & in_third))
        original_mean[region] = _mean_or_zero(pick(original, columns.keep_original & in_third))
    return reference_mean, original_mean


def rhlv_reference_for_vertebra(original_label_map: np.ndarray, synthesized_label_map: np.ndarray, label: int,
                                spacing_mm: float | Sequence[float] = 1.0, plane: str = "sagittal",
                                height_threshold: float = MeasureOptions.height_threshold,
                                length_divisor: int = MeasureOptions.length_divisor) -> RHLVResult:
    """RHLV of vertebra ``label`` by the published rule; maps are (S->I, A->P, R->L) crops on one grid.

    ``RHLVResult.slab`` is the first and last slice (inclusive) of the half-open range.
    Raises :class:`RHLVError` when a map lacks the target or no slice holds it in both.
    """
    if np.shape(original_label_map) != np.shape(synthesized_label_map):
        raise RHLVError(f"original {np.shape(original_label_map)} and synthesized "
                        f"{np.shape(synthesized_label_map)} label maps differ in shape")
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)))
    maps = []
    for what, label_map in (("original", original_label_map), ("synthesized", synthesized_label_map)):
        heights = target_heights(label_map, label, min_component_fraction=0.0)
        if heights is None:
            raise RHLVError(f"{what} label map has no voxels of label {label}")
        maps.append(plane_heights(heights.counts, plane))
    original, synthesized = maps
    slab = published_slab(original, length_divisor)
    columns = published_columns(synthesized, original, height_threshold, ratio_epsilon=RATIO_EPSILON[plane])
    reference_mean, original_mean = published_means(columns, original, slab)
    rhlv = {region: (reference_mean[region] - original_mean[region]) / (reference_mean[region] + PUBLISHED_EPSILON)
            for region in RHLV_REGIONS}
    thirds = [original_mean[region] for region in THIRDS]
    kept = columns.keep_reference_regional & columns.keep_original
    loss = np.where(kept, 1.0 - original / np.where(kept, columns.reference_regional, 1.0), np.nan)
    return RHLVResult(
        label=int(label), plane=plane, rhlv=rhlv,
        height_syn_mm={region: value * spacing[0] for region, value in reference_mean.items()},
        height_ori_mm={region: value * spacing[0] for region, value in original_mean.items()},
        relative_height_label=min(thirds) / (max(thirds) + PUBLISHED_EPSILON), slab=(slab[0], slab[1] - 1),
        loss_map=plane_to_axial(loss, plane).astype(np.float32), spacing_mm=spacing,
    )
