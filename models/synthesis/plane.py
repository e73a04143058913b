"""The iterative synthesis of one vertebra in one plane (docs/design.md, 'Iterative synthesis').

For one straightened crop (axes S->I, A->P, R->L) and one plane, the slices of the central 4/5 of
the target's extent along the plane's slicing axis (sagittal: axis 2, coronal: axis 1) go through
three batched steps:

1. the upper neighbour (the adjacent vertebra in anatomical order present in the crop) is
   synthesized in the slices where it has more than ``neighbour_min_px`` pixels;
2. the lower neighbour is synthesized in its slices, on the result of step 1;
3. the target is synthesized on the result of step 2, so its context holds pseudo-healthy neighbours.

Each step masks the current slices (``data.masking.make_masked_slices``, the one masking
implementation), runs the generator on all of them at once (in chunks of ``batch_size``) and writes
the fine output back with the height-adaptive composition (``models.composition``): with the
predicted height H = max(ceil(h_hat), h) (clamped to the band), the rows above the vertebra move up
by (H - h) // 2, the rows below move down by the rest, and H generated rows centred on the band
replace the vertebra. This is the reference implementation's composition: the *whole* slice
(CT and labels) is re-laid out, so everything above or below the synthesized vertebra is shifted,
including the other neighbour and the target itself; the next step masks the shifted slice.
Composition happens in HU for the CT (rows outside the generated ones keep their exact HU, beyond
the training window too) and in VerSe ids for the labels: generated rows get the step's id where the
generator's fine segmentation exceeds 0.5 and background elsewhere.

Choices, each as in the reference unless noted:

- The slice offset r and the attention map are the target's for all three steps (the attention map
  is not shifted by the neighbour compositions; a neighbour step only moves it with the slice while
  presenting the neighbour centred).
- Neighbour presence (> ``neighbour_min_px`` pixels) is counted in the original slice; the threshold
  is 200 mm² converted with the slice's pixel area (the reference counts 200 pixels at any spacing,
  the same at 1 mm pixels).
- Unlike the reference, a neighbour step moves each slice vertically so the neighbour is centred on
  row H // 2 as the generator's training slices were (``synthesize_step``), then moves the result back.

``--protocol reference`` (``util.protocol``) instead synthesizes neighbours in place, marks 41 mask
rows, reads generated rows at the composed rows, counts 200 neighbour pixels and truncates the CT
and attention map to uint8 grey before every step, as the reference does.
- A target taller than the band in a slice is handled as the reference does: the target rows are
  clamped to the M rows starting at ``mean_row - M // 2`` (``clamp_tall_targets``), the band covers
  them, and the parts of the vertebra outside them stay in the context. Unlike the reference (which
  then pastes h generated rows and pushes the rows below down by h - M, reading generator output
  outside the band), exactly the M band rows are replaced: the vertebra keeps its height.
- A slice whose target cannot be masked (absent after removing small components) keeps the
  original crop slice, neighbour steps included (the reference writes zeros there).
- Slices outside the central range keep the original crop (the reference writes zeros there);
  the output is "the crop with the target and its neighbours replaced".
- Coronal slices are centred on a canvas as wide as the sagittal slices (``data.masking.paste_columns``,
  fill -1 for CT, 0 for labels and attention, as the training dataset does); the generator output is
  cropped back to the slice before composing, so canvas columns never enter the next step.

Besides the CT and labels, each plane keeps a soft target map (the generator's target probability
in generated rows, 1 where the original target remains): the 2.5D fusion (``models.synthesis.fusion``) labels a
voxel as the target where the mean of the two planes' maps exceeds 0.5 (the reference's fusion rule)
and averages the CT.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from data.image_io import unwindow, window_hu
from data.labels import VERTEBRA_NAMES, spine_rank
from data.masking import (
    CENTRAL_FRACTION,
    CT_CANVAS_FILL,
    canvas_width,
    central_slice_range,
    extend_band_rows,
    make_masked_slices,
    paste_columns,
    plane_slab,
    slice_offset_ratio,
    target_masks,
    target_slice_extent,
)
from data.planes import PLANES
from models.composition import compose_height_adaptive
from models.synthesis.runner import GeneratorRunner
from models.synthesis.settings import SynthesisSettings
from models.synthesis.shifts import centring_shifts, shift_rows, shift_rows_back
from models.synthesis.truncation import truncate_to_grey

SEGMENTATION_THRESHOLD = 0.5


@dataclass
class StepRecord:
    """What one step did: the label synthesized and the slice indices (along the plane axis) it changed."""

    role: str  # "upper", "lower" or "target"
    label: int
    slices: list[int]


@dataclass
class PlaneSynthesis:
    """Synthesis of one vertebra in one plane; volumes on the crop grid (S->I, A->P, R->L).

    ct_hu: float32 HU. label_map: uint8 VerSe ids. target_probability: float32 soft target mask
    (generator probability in generated rows, 1 where the original target remains, else 0).
    processed_slices: indices along the plane axis whose target was synthesized.
    steps: the three steps in the order they ran (neighbour steps only when the neighbour exists).
    """

    plane: str
    ct_hu: np.ndarray
    label_map: np.ndarray
    target_probability: np.ndarray
    processed_slices: list[int]
    steps: list[StepRecord] = field(default_factory=list)


def adjacent_labels(labels_present: Iterable[int], target_label: int) -> tuple[int | None, int | None]:
    """(upper, lower) neighbour of ``target_label``: the nearest labels present on each side in anatomical
    order (``data.labels.spine_rank``) at most one rank step away, else ``None``.

    T13 (28) sits between T12 and L1 and L6 (25) after L5, so L1's upper neighbour is T13 when the crop
    has it and T12 otherwise; a vertebra whose adjacent one is missing from the crop has no neighbour there.
    """
    target_rank = spine_rank(target_label)
    ranks = {int(label): spine_rank(label) for label in labels_present
             if int(label) in VERTEBRA_NAMES and int(label) != int(target_label)}
    above = [label for label, rank in ranks.items() if target_rank - 1.0 <= rank < target_rank]
    below = [label for label, rank in ranks.items() if target_rank < rank <= target_rank + 1.0]
    upper = max(above, key=lambda label: ranks[label]) if above else None
    lower = min(below, key=lambda label: ranks[label]) if below else None
    return upper, lower


def clamp_tall_targets(label_slices: np.ndarray, target_label: int, mask_height_px: int,
                       min_component_px: int) -> np.ndarray:
    """Labels where a target taller than the band keeps only its M rows from ``mean_row - M // 2``.

    As the reference: rows x1 = int(mean target row) - M // 2 (clamped into the image) to x2 = x1 + M.
    Target pixels outside them are set to 0 in the returned copy (used only to locate the target), so
    ``make_masked_slices`` opens the band over them and keeps the rest of the vertebra as context.
    (N, H, W) in, (N, H, W) out; slices whose target fits the band are unchanged.
    """
    labels = np.array(label_slices, copy=True)
    masks = target_masks(labels, target_label, min_component_px)
    rows = labels.shape[1]
    for n in np.flatnonzero(masks.any(axis=(1, 2))):
        row_index = np.flatnonzero(masks[n].any(axis=1))
        if row_index[-1] - row_index[0] <= mask_height_px:
            continue
        mean_row = int(np.mean(np.nonzero(masks[n])[0]))
        top = int(np.clip(mean_row - mask_height_px // 2, 0, rows - 1 - mask_height_px))
        outside = np.ones(rows, dtype=bool)
        outside[top:top + mask_height_px + 1] = False
        labels[n][outside[:, None] & (labels[n] == target_label)] = 0
    return labels


def synthesize_step(runner: GeneratorRunner, ct_hu: np.ndarray, labels: np.ndarray, target_probability: np.ndarray,
                    cam: np.ndarray | None, offsets: np.ndarray, step_label: int, is_target: bool,
                    settings: SynthesisSettings, canvas: int, stepped: np.ndarray | None = None) -> np.ndarray:
    """One batched step: synthesize vertebra ``step_label`` in every given slice, in place.

    ct_hu, labels, target_probability: (N, H, W) current slices (float32 HU, integer ids, float32),
    updated in place where the step succeeded. cam: (N, H, W) attention or ``None``. offsets: (N,)
    slice offsets r. canvas: generator image width (columns are centred on it). Returns the (N,) bool
    mask of slices that were synthesized (the vertebra could be masked there).

    The generator was trained on straightened crops, whose target is centred on row H // 2, and paints
    around the crop's centre rows. A neighbour step therefore presents every slice as in training: the
    slice (CT, labels, target map, attention) is moved vertically so that the neighbour's centre row is
    row H // 2 (``centring_shifts``; rows moved in from outside are background: CT ``hu_window[0]`` HU,
    which windows to ``CT_CANVAS_FILL``, labels and maps 0), synthesized, and the composed slice is moved
    back; rows that were moved out of the frame, far from the neighbour, keep the step's input. The
    target is already centred: its step runs unshifted.
    """
    if len(ct_hu) == 0:
        return np.zeros(0, dtype=bool)
    recentre = settings.protocol.recentre_neighbours and not is_target
    shifts = centring_shifts(labels, step_label) if recentre else np.zeros(len(ct_hu), dtype=np.int64)
    slices = (ct_hu, labels, target_probability)
    centred = [shift_rows(image, shifts, fill) for image, fill in zip(slices, (settings.hu_window[0], 0.0, 0.0))]
    centred_cam = None if cam is None else shift_rows(cam, shifts, 0.0)
    valid = synthesize_centred(runner, *centred, centred_cam, offsets, step_label, is_target, settings, canvas,
                               stepped)
    for image, result in zip(slices, centred):
        image[valid] = shift_rows_back(result[valid], image[valid], shifts[valid]).astype(image.dtype)
    return valid


def synthesize_centred(runner: GeneratorRunner, ct_hu: np.ndarray, labels: np.ndarray, target_probability: np.ndarray,
                       cam: np.ndarray | None, offsets: np.ndarray, step_label: int, is_target: bool,
                       settings: SynthesisSettings, canvas: int, stepped: np.ndarray | None = None) -> np.ndarray:
    """``synthesize_step`` on slices already centred on ``step_label`` (same arguments, (N, H, W) arrays
    updated in place): mask, run the generator, compose. Returns the (N,) bool mask of synthesized slices.
    ``stepped`` (N,) marks slices composed by an earlier step (``truncate_to_grey``, --protocol reference)."""
    width = ct_hu.shape[2]
    left = (canvas - width) // 2
    protocol = settings.protocol
    if protocol.truncate_to_grey:
        step_ct, cam = truncate_to_grey(ct_hu, cam, settings.hu_window, stepped)
    else:
        step_ct = ct_hu
    ct_canvas = paste_columns(window_hu(step_ct, settings.hu_window), canvas, CT_CANVAS_FILL)
    located = clamp_tall_targets(labels, step_label, settings.mask_height_px, settings.min_component_px)
    cam_canvas = None if cam is None else paste_columns(np.asarray(cam, dtype=np.float32), canvas, 0.0)
    masked = make_masked_slices(ct_canvas, paste_columns(located, canvas, 0), step_label, cam_canvas,
                                settings.mask_height_px, settings.min_component_px)
    valid = np.flatnonzero(masked.valid)
    if valid.size == 0:
        return masked.valid
    band_mask = masked.band_mask[valid]
    if protocol.inference_mask_extra_row:
        band_mask = extend_band_rows(band_mask, masked.band_top[valid], settings.mask_height_px)
    step_cam = masked.cam[valid] if settings.switches.hgam else np.zeros_like(masked.cam[valid])
    fine_ct, fine_seg, fine_height = runner(masked.masked_ct[valid], offsets[valid], band_mask, step_cam,
                                            settings.mask_height_px)
    if not settings.switches.shrm:
        fine_height = np.full(len(valid), settings.mask_height_px, dtype=np.float32)
    fine_ct, fine_seg = fine_ct[:, :, left:left + width], fine_seg[:, :, left:left + width]
    generated_labels = np.where(fine_seg > SEGMENTATION_THRESHOLD, np.float32(step_label), np.float32(0.0))
    generated_probability = fine_seg if is_target else np.zeros_like(fine_seg)
    original = np.stack([step_ct[valid], labels[valid].astype(np.float32), target_probability[valid]], axis=1)
    generated = np.stack([unwindow(fine_ct, settings.hu_window), generated_labels, generated_probability], axis=1)
    top, bottom = masked.target_top[valid], masked.target_bottom[valid]
    centre = masked.band_centre[valid] if protocol.compose_at_band_centre else (top + bottom) // 2
    composed = compose_height_adaptive(
        torch.from_numpy(original), torch.from_numpy(generated), torch.from_numpy(top), torch.from_numpy(bottom),
        torch.from_numpy(centre), torch.from_numpy(fine_height.astype(np.float32)), settings.mask_height_px).numpy()
    ct_hu[valid] = composed[:, 0]
    labels[valid] = np.rint(composed[:, 1]).astype(labels.dtype)
    target_probability[valid] = composed[:, 2]
    return masked.valid


def synthesize_plane(runner: GeneratorRunner, ct_hu: np.ndarray, label_map: np.ndarray, cam: np.ndarray | None,
                     target_label: int, plane: str, settings: SynthesisSettings) -> PlaneSynthesis:
    """Iterative synthesis (upper neighbour, lower neighbour, target) of one vertebra in one plane.

    ct_hu (float HU), label_map (integer VerSe ids) and cam ([0, 1] or ``None``) are crop volumes
    (S->I, A->P, R->L). Raises ``ValueError`` when the target label is not in the crop.
    """
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")
    label_slab = plane_slab(np.asarray(label_map), plane)
    extent = target_slice_extent(label_slab, target_label, settings.min_component_px)
    if extent is None:
        raise ValueError(f"target label {target_label} is not in the label crop")
    first, last = extent
    start, stop = central_slice_range(first, last, CENTRAL_FRACTION)
    indices = np.arange(start, stop + 1)
    offsets = np.asarray(slice_offset_ratio(indices, first, last, CENTRAL_FRACTION), dtype=np.float32)
    ct = np.array(plane_slab(np.asarray(ct_hu, dtype=np.float32), plane)[indices])
    original_labels = np.array(label_slab[indices])
    labels = original_labels.copy()
    probability = (labels == target_label).astype(np.float32)
    cam_slices = None if cam is None else np.array(plane_slab(np.asarray(cam, dtype=np.float32), plane)[indices])
    canvas = canvas_width(label_map.shape)
    upper, lower = adjacent_labels(np.unique(label_map), target_label)
    steps: list[StepRecord] = []
    stepped = np.zeros(len(indices), dtype=bool)  # slices already composed by a neighbour step
    for role, neighbour in (("upper", upper), ("lower", lower)):
        if neighbour is None or not settings.switches.iterative:
            continue
        present = np.flatnonzero((original_labels == neighbour).sum(axis=(1, 2)) > settings.neighbour_min_px)
        if present.size == 0:
            continue
        sub = (ct[present], labels[present], probability[present])
        done = synthesize_step(runner, *sub, None if cam_slices is None else cam_slices[present], offsets[present],
                               neighbour, False, settings, canvas, stepped[present])
        ct[present], labels[present], probability[present] = sub
        stepped[present[done]] = True
        steps.append(StepRecord(role, neighbour, indices[present[done]].tolist()))
    done = synthesize_step(runner, ct, labels, probability, cam_slices, offsets, target_label, True, settings, canvas,
                           stepped)
    steps.append(StepRecord("target", target_label, indices[done].tolist()))
    out_ct = np.array(ct_hu, dtype=np.float32, copy=True)
    out_labels = np.array(label_map, dtype=np.uint8, copy=True)
    out_probability = (out_labels == target_label).astype(np.float32)
    for volume, slices in ((out_ct, ct), (out_labels, labels), (out_probability, probability)):
        plane_slab(volume, plane)[indices[done]] = slices[done]
    return PlaneSynthesis(plane, out_ct, out_labels, out_probability, indices[done].tolist(), steps)
