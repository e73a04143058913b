"""Iterative two-stage synthesis of pseudo-healthy vertebrae (inference, DESIGN 4.6).

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

Batching: each step is one pass over all its slices; on GPU they go through the generator at once,
on CPU in chunks of ``CPU_BATCH_SIZE`` (the generator is compute-bound there, so larger batches gain
nothing and lose cache locality; see benchmarks/bench_synthesis.py). ``GeneratorRunner`` also runs the
generator channels-last with spectral-norm weights computed once per call and, optionally, under
autocast (``--amp`` with ``--amp_dtype``: bfloat16 by default, float16 on GPU; ``--cpu_bf16`` on CPU).

Besides the CT and labels, each plane keeps a soft target map (the generator's target probability
in generated rows, 1 where the original target remains): the 2.5D fusion (``fuse_planes``) labels a
voxel as the target where the mean of the two planes' maps exceeds 0.5 (the reference's fusion rule)
and averages the CT.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
import typing
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parametrize

from data.aligned_dataset import CT_CANVAS_FILL, default_split_json
from data.crops import Crop, crop_paths, file_signature, list_crop_keys, load_crop, read_split, require_listed_crops
from data.image_io import (
    DEFAULT_WINDOW_HU,
    ImageIOError,
    Volume,
    check_same_grid,
    load_ct,
    save_nifti,
    unwindow,
    window_hu,
)
from data.labels import VERTEBRA_NAMES, spine_rank
from data.masking import (
    CENTRAL_FRACTION,
    MIN_COMPONENT_PX,
    PLANES,
    canvas_width,
    central_slice_range,
    extend_band_rows,
    gather_rows,
    make_masked_slices,
    mask_height_rows,
    paste_columns,
    plane_slab,
    slice_offset_ratio,
    target_masks,
    target_slice_extent,
)
from models import find_model_using_name
from models.amp import resolve_amp_dtype
from models.composition import compose_height_adaptive
from models.module_switches import ModuleSwitches
from models.networks import GeneratorOutput
from util.checkpoint import checkpoint_path, load_checkpoint
from util.cpu_features import onednn_bf16_supported
from util.distributed import gather_objects, rank_and_size, resolve_device
from util.fileio import prepare_output_dir, read_json, write_json
from util.protocol import PROTOCOLS, Protocol, get_protocol

NEIGHBOUR_MIN_MM2 = 200.0  # a neighbour is synthesized in a slice where its area (mm²) exceeds this
NEIGHBOUR_MIN_PX = 200  # the same threshold in pixels at 1 mm x 1 mm pixels (the reference's 200 pixels)
SEGMENTATION_THRESHOLD = 0.5
FUSED_TARGET_THRESHOLD = 0.5
TRUNCATION_EPS = 1e-4  # grey levels (--protocol reference truncation, see truncate_to_grey)
CPU_BATCH_SIZE = 4  # slices per generator call on CPU: the fastest per slice in benchmarks/bench_synthesis.py
PLANE_MODES = (*PLANES, "both")


class Generator(typing.Protocol):
    """What the synthesis needs of a generator (``models.networks.HealthiVertGenerator``; the AOT-GAN baseline's
    ``models.aotgan_networks.AOTSynthesisGenerator``); ``load_generator`` builds the one the checkpoint names."""

    def __call__(self, masked_ct: torch.Tensor, offset_plane: torch.Tensor, band_mask: torch.Tensor,
                 cam: torch.Tensor, mask_height_px: float) -> GeneratorOutput: ...


@dataclass(frozen=True)
class SynthesisSettings:
    """Masking and composition parameters of one trained model.

    mask_height_px: band height M in rows (``--mask_height`` mm / row spacing).
    hu_window: CT window (HU) mapped to [-1, 1], as in training.
    min_component_px: target components smaller than this (pixels per slice) are ignored.
    neighbour_min_px: a neighbour is synthesized in slices where it has more pixels than this
        (``NEIGHBOUR_MIN_MM2`` over the slice's pixel area, see ``neighbour_min_pixels``).
    protocol: ``util.protocol.Protocol`` (neighbour re-centring, 41-row mask, composition centre,
        uint8 grey truncation between steps).
    switches: ``models.module_switches.ModuleSwitches``: without HGAM the generator gets an all-zero
        map, without SHRM the composition uses the band height, without iterative synthesis only the
        target is synthesized.
    """

    mask_height_px: int
    hu_window: tuple[float, float] = DEFAULT_WINDOW_HU
    min_component_px: int = MIN_COMPONENT_PX
    neighbour_min_px: float = NEIGHBOUR_MIN_PX
    protocol: Protocol = PROTOCOLS["healthivert"]
    switches: ModuleSwitches = ModuleSwitches()


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


def neighbour_min_pixels(pixel_area_mm2: float) -> float:
    """Neighbour presence threshold in pixels: ``NEIGHBOUR_MIN_MM2`` (200 mm²) over the pixel area (mm²).

    The reference counts 200 pixels whatever the spacing; at 1 mm x 1 mm pixels this is the same.
    """
    if pixel_area_mm2 <= 0:
        raise ValueError(f"pixel area must be positive, got {pixel_area_mm2} mm²")
    return NEIGHBOUR_MIN_MM2 / pixel_area_mm2


def plane_pixel_area_mm2(spacing_mm: Sequence[float], plane: str) -> float:
    """Area (mm²) of one pixel of a ``plane`` slice of a crop with (S->I, A->P, R->L) ``spacing_mm``:
    rows are S->I, columns A->P (sagittal) or R->L (coronal)."""
    return float(spacing_mm[0]) * float(spacing_mm[1 if plane == "sagittal" else 2])


def centring_shifts(label_slices: np.ndarray, label: int) -> np.ndarray:
    """(N,) int64 rows to move each (N, H, W) slice down so that the centre row of ``label`` (its mean
    pixel row, truncated as in ``clamp_tall_targets``) lands on row H // 2, the row straightened crops
    centre the target on (what the generator saw in training); 0 where the label is absent."""
    pixels_per_row = (np.asarray(label_slices) == label).sum(axis=2)
    counts = pixels_per_row.sum(axis=1)
    centre = (pixels_per_row @ np.arange(pixels_per_row.shape[1])) // np.maximum(counts, 1)
    return np.where(counts > 0, pixels_per_row.shape[1] // 2 - centre, 0).astype(np.int64)


def shifted_sources(shifts: np.ndarray, image_rows: int) -> np.ndarray:
    """(N, image_rows) source row of every row of slices moved down by ``shifts`` (N,) rows; -1 where
    the row comes from outside the frame."""
    sources = np.arange(image_rows)[None, :] - np.asarray(shifts)[:, None]
    return np.where((sources >= 0) & (sources < image_rows), sources, -1)


def shift_rows(images: np.ndarray, shifts: np.ndarray, fill_value: float) -> np.ndarray:
    """(N, H, W) float32 ``images`` moved down by ``shifts`` (N,) rows (up where negative), rows moved in
    from outside the frame set to ``fill_value``."""
    return gather_rows(images, shifted_sources(shifts, images.shape[1]), fill_value)


def shift_rows_back(shifted: np.ndarray, original: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Inverse of ``shift_rows(original, shifts, ...)`` for (N, H, W) ``shifted`` (float32): rows that
    were moved out of the frame are taken from ``original``."""
    sources = shifted_sources(-np.asarray(shifts), shifted.shape[1])
    return np.where((sources < 0)[:, :, None], original, gather_rows(shifted, sources, 0.0))


def autocast_dtype(device: torch.device, amp: bool, cpu_bf16: bool, amp_dtype: str = "auto") -> torch.dtype | None:
    """Autocast type for inference: ``--amp`` with ``--amp_dtype`` (``models.amp``), or bfloat16 on CPU with
    ``cpu_bf16``; None = full precision."""
    if cpu_bf16 and device.type == "cpu":
        return torch.bfloat16
    return resolve_amp_dtype(amp, amp_dtype, device)


def resolve_batch_size(batch_size: int, device: torch.device) -> int:
    """Slices per generator call: ``batch_size`` when >= 0 (0: all slices of a step at once), else
    automatic: all slices on GPU, ``CPU_BATCH_SIZE`` on CPU (larger batches only add cache misses there)."""
    if batch_size >= 0:
        return batch_size
    return 0 if device.type == "cuda" else CPU_BATCH_SIZE


class GeneratorRunner:
    """Runs a generator for inference on stacks of slices: chunks of ``batch_size`` (0: all at once),
    no autograd, spectral-norm weights computed once per call, optional autocast to ``amp_dtype``.
    Inputs and outputs are NumPy (N, H, W) float32 arrays; ``calls`` counts generator calls."""

    def __init__(self, generator: torch.nn.Module | Generator, device: torch.device | str = "cpu",
                 batch_size: int = CPU_BATCH_SIZE, amp_dtype: torch.dtype | None = None) -> None:
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0: all slices at once), got {batch_size}")
        self.generator = generator
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.amp_dtype = amp_dtype
        self.calls = 0
        if amp_dtype == torch.bfloat16 and self.device.type == "cpu" and not onednn_bf16_supported():
            warnings.warn("bfloat16 on this CPU (no AVX-512 / AMX) runs convolutions in a generic kernel, several "
                          "times slower than float32 (benchmarks/README.md): synthesize in float32 here", stacklevel=2)

    def __call__(self, masked_ct: np.ndarray, offsets: np.ndarray, band_mask: np.ndarray, cam: np.ndarray,
                 mask_height_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fine CT (windowed), target probability (N, H, W) and height h_hat (N,) in rows."""
        count = len(masked_ct)
        step = self.batch_size or max(count, 1)
        outputs = [self._run(masked_ct[i:i + step], offsets[i:i + step], band_mask[i:i + step], cam[i:i + step],
                             mask_height_px) for i in range(0, count, step)]
        return tuple(np.concatenate(parts) for parts in zip(*outputs))  # type: ignore[return-value]

    def _run(self, masked_ct: np.ndarray, offsets: np.ndarray, band_mask: np.ndarray, cam: np.ndarray,
             mask_height_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def image(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[:, None].to(self.device)

        shape = (len(offsets), 1) + masked_ct.shape[1:]
        offset_plane = torch.as_tensor(offsets, dtype=torch.float32).view(-1, 1, 1, 1).expand(shape)
        self.calls += 1
        with torch.inference_mode(), parametrize.cached(), torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            out = self.generator(image(masked_ct), offset_plane.contiguous().to(self.device), image(band_mask),
                                 image(cam), float(mask_height_px))
        return (out.fine_ct[:, 0].float().cpu().numpy(), out.fine_target_seg[:, 0].float().cpu().numpy(),
                out.fine_height.float().cpu().numpy())


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


def reference_float_grey(grey: np.ndarray) -> np.ndarray:
    """Grey levels as the reference holds a step's output: a pixel kept from its uint8 input k is
    ``(((k / 255 - 0.5) / 0.5) + 1) * 127.5`` in float32, often just below k (e.g. 46.999996), so its
    next ``astype(np.uint8)`` drops a level. Values within ``TRUNCATION_EPS`` of an integer are taken
    as such kept levels; others (generated pixels) are returned unchanged. float64 in and out."""
    level = np.rint(grey)
    tensor = (level.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    held = ((tensor + np.float32(1.0)) * np.float32(127.5)).astype(np.float64)
    return np.where(np.abs(grey - level) < TRUNCATION_EPS, held, grey)


def truncate_to_grey(ct_hu: np.ndarray, cam: np.ndarray | None, hu_window: tuple[float, float],
                     stepped: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference's ``astype(np.uint8)`` of a step's inputs, for (N, H, W) slices: CT as grey
    ``hu_window`` -> 0..255 (clipped), truncated, back in HU (float32); attention map truncated to k/255.

    ``stepped`` (N,) marks slices that are the output of an earlier step, whose kept pixels the
    reference holds as float32 just below their level (``reference_float_grey``); other slices hold
    the crop's values, truncated after ``TRUNCATION_EPS`` grey levels absorb the float32 rounding of HU.
    """
    low, high = hu_window
    grey = np.clip((np.asarray(ct_hu, dtype=np.float64) - low) / (high - low) * 255.0, 0.0, 255.0)
    held = grey + TRUNCATION_EPS
    if stepped is not None and np.any(stepped):
        held[stepped] = reference_float_grey(grey[stepped])
    truncated_ct = (np.floor(held) / 255.0 * (high - low) + low).astype(np.float32)
    if cam is None:
        return truncated_ct, None
    levels = np.floor(np.clip(np.asarray(cam, dtype=np.float64), 0.0, 1.0) * 255.0 + TRUNCATION_EPS)
    return truncated_ct, (levels / 255.0).astype(np.float32)


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


def fuse_planes(sagittal: PlaneSynthesis, coronal: PlaneSynthesis, target_label: int) -> tuple[np.ndarray, np.ndarray]:
    """2.5D fusion: (CT HU float32, labels uint8) of two planes' syntheses of the same crop.

    CT: the mean of the two planes. Labels: the target where the mean of the two soft target maps
    exceeds 0.5 (the reference's fusion rule); elsewhere the sagittal label unless it is the target,
    then the coronal label unless it is the target, else background.
    """
    ct = (sagittal.ct_hu + coronal.ct_hu) / np.float32(2.0)
    probability = (sagittal.target_probability + coronal.target_probability) / np.float32(2.0)
    sagittal_other = np.where(sagittal.label_map != target_label, sagittal.label_map, 0)
    coronal_other = np.where(coronal.label_map != target_label, coronal.label_map, 0)
    other = np.where(sagittal_other > 0, sagittal_other, coronal_other)
    labels = np.where(probability > FUSED_TARGET_THRESHOLD, target_label, other).astype(np.uint8)
    return ct.astype(np.float32), labels


# ---------------------------------------------------------------------------------------------------------------
# Dataset level: checkpoints, file layout, sharding, resuming, summary.


@dataclass
class LoadedModel:
    """A generator ready for inference and the training options it was saved with."""

    generator: torch.nn.Module  # HealthiVertGenerator, or another model's (``BaseModel.inference_generator``)
    options: dict[str, Any]
    path: Path


def checkpoint_file(checkpoints_dir: str | Path, name: str, epoch: str | int = "latest", load_iter: int = 0) -> Path:
    """``<checkpoints_dir>/<name>/<epoch>.pth`` (or ``iter_<load_iter>.pth`` when ``load_iter`` > 0)."""
    tag = f"iter_{load_iter}" if load_iter and int(load_iter) > 0 else str(epoch)
    return checkpoint_path(Path(checkpoints_dir) / name, tag)


def load_generator(path: str | Path, device: torch.device | str = "cpu", plane: str | None = None) -> LoadedModel:
    """Build the generator of a training checkpoint (``torch.load(weights_only=True)``) in eval mode.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a foreign
    checkpoint, weights that do not fit the saved options, or a model trained on another ``plane``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (train with --name {path.parent.name}, "
                                "or check --checkpoints_dir / --epoch)")
    checkpoint = load_checkpoint(path, map_location="cpu")
    options = dict(checkpoint.get("options") or {})
    trained_plane = options.get("plane")
    if plane is not None and trained_plane is not None and trained_plane != plane:
        raise ValueError(f"{path}: generator trained on {trained_plane} slices, cannot synthesize {plane} slices")
    nets = checkpoint.get("model", {}).get("nets", {})
    if "G" not in nets:
        raise ValueError(f"{path}: checkpoint holds no generator weights (model.nets.G)")
    try:
        generator = find_model_using_name(str(options.get("model") or "healthivert")).inference_generator(options)
    except (ValueError, NotImplementedError) as err:
        raise ValueError(f"{path}: {err}") from None
    try:
        generator.load_state_dict(nets["G"])
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: generator weights do not match --ngf {options.get('ngf', 16)} "
                         f"({first_line})") from None
    generator.eval().to(torch.device(device), memory_format=torch.channels_last)
    return LoadedModel(generator, options, path)


def settings_for(options: dict[str, Any], row_spacing_mm: float, fallback: argparse.Namespace | None = None,
                 pixel_area_mm2: float = 1.0) -> SynthesisSettings:
    """Masking settings of a model: its training options (``mask_height`` mm, ``hu_window``,
    ``min_component_px``), falling back to ``fallback``'s values, then the defaults; the protocol is
    ``fallback.protocol``; the module switches are the checkpoint's ``no_eem``/``no_shrm``/``no_hgam`` and
    ``fallback``'s ``--no_iterative``. The neighbour threshold is 200 mm² in pixels of ``pixel_area_mm2``
    (``neighbour_min_pixels``), or 200 pixels under ``--protocol reference``."""
    def option(name: str, default: Any) -> Any:
        if options.get(name) is not None:
            return options[name]
        return getattr(fallback, name, None) if getattr(fallback, name, None) is not None else default

    window = option("hu_window", DEFAULT_WINDOW_HU)
    protocol = get_protocol(getattr(fallback, "protocol", None))
    neighbour_px = NEIGHBOUR_MIN_PX if protocol.neighbour_threshold_px else neighbour_min_pixels(pixel_area_mm2)
    return SynthesisSettings(mask_height_rows(float(option("mask_height", 40.0)), row_spacing_mm),
                             (float(window[0]), float(window[1])), int(option("min_component_px", MIN_COMPONENT_PX)),
                             neighbour_px, protocol, ModuleSwitches.from_options(options, fallback))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class OutputLayout:
    """Where the synthesized volumes go: ``<root>/CT_fake/<key>.nii.gz``, ``<root>/label_fake/<key>.nii.gz``
    and their provenance record ``<root>/provenance/<key>.json`` (checkpoints, options and inputs they came from)."""

    root: Path

    def ct(self, key: str) -> Path:
        return self.root / "CT_fake" / f"{key}.nii.gz"

    def label(self, key: str) -> Path:
        return self.root / "label_fake" / f"{key}.nii.gz"

    def record(self, key: str) -> Path:
        return self.root / "provenance" / f"{key}.json"

    def exists(self, key: str) -> bool:
        """Both volumes of ``key`` exist (they are written atomically, CT first, the record last)."""
        return self.ct(key).is_file() and self.label(key).is_file()

    def done(self, key: str, provenance: dict[str, Any]) -> bool:
        """Both volumes exist and were made from exactly ``provenance`` (same checkpoints, options, inputs)."""
        if not self.exists(key) or not self.record(key).is_file():
            return False
        try:
            return read_json(self.record(key)) == provenance
        except ValueError:
            return False

    def write(self, key: str, ct_hu: np.ndarray, label_map: np.ndarray, affine: np.ndarray,
              provenance: dict[str, Any]) -> None:
        """int16 HU CT and uint8 labels on the crop grid, then the provenance record, each written atomically."""
        self.record(key).unlink(missing_ok=True)  # volumes and record must never disagree, even if killed mid-way
        hu = np.clip(np.rint(ct_hu), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
        save_nifti(hu, affine, self.ct(key))
        save_nifti(np.asarray(label_map, dtype=np.uint8), affine, self.label(key))
        write_json(self.record(key), provenance)

    def prepare(self) -> None:
        """Prove the output folders writable and remove partial files of killed runs (before any work)."""
        for folder in ("CT_fake", "label_fake", "provenance"):
            prepare_output_dir(self.root / folder, "synthesis output folder (--results_dir/--name)")


def synthesis_dir(opt: argparse.Namespace) -> Path:
    """The folder receiving ``CT_fake/`` and ``label_fake/``: ``opt.output_dir`` when set, else
    ``<results_dir>/<name>``."""
    output_dir = getattr(opt, "output_dir", None)
    return Path(output_dir) if output_dir else Path(opt.results_dir) / opt.name


def output_layouts(root: str | Path, plane_mode: str) -> dict[str, OutputLayout]:
    """Output folders per product under ``root`` (:func:`synthesis_dir`): ``sagittal``/``coronal``
    (the plane run alone goes to ``root``); with ``both``: sagittal in ``root``, coronal in
    ``root/coronal/``, the 2.5D fusion in ``root/fused/``."""
    root = Path(root)
    if plane_mode == "both":
        return {"sagittal": OutputLayout(root), "coronal": OutputLayout(root / "coronal"),
                "fused": OutputLayout(root / "fused")}
    if plane_mode not in PLANES:
        raise ValueError(f"--plane {plane_mode!r}: expected one of {PLANE_MODES}")
    return {plane_mode: OutputLayout(root)}


def shard(keys: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The keys of ``rank`` out of ``world_size`` (round robin over the sorted keys)."""
    return list(keys)[rank::world_size]


def select_keys(dataroot: str | Path, split_names: str | None, split_json: str | Path | None) -> list[str]:
    """Vertebra keys to synthesize: every label crop, or the keys of the named splits (comma-separated,
    e.g. ``val,test``) in the split JSON (default ``<dataroot>/../vertebra_data.json``). Keys listed
    in the split without a crop are kept (``synthesize_dataset`` refuses them before any work)."""
    if not split_names or split_names == "all":
        return list_crop_keys(dataroot)
    path = Path(split_json) if split_json else default_split_json(dataroot)
    split = read_split(path)
    names = [name.strip() for name in split_names.split(",") if name.strip()]
    unknown = [name for name in names if name not in split]
    if unknown:
        raise ValueError(f"--split {split_names!r}: unknown split(s) {unknown}; expected train, val, test or all")
    return sorted({key for name in names for key in split[name]})


def load_attention(cam_dir: str | Path | None, crop: Crop, label_path: Path) -> np.ndarray | None:
    """The crop's attention map in [0, 1] (``<cam_dir>/<key>.nii.gz``), ``None`` when absent."""
    if not cam_dir:
        return None
    path = Path(cam_dir) / f"{crop.key}.nii.gz"
    if not path.is_file():
        return None
    cam = load_ct(path)
    check_same_grid(Volume(crop.label_map, crop.affine, label_path), cam)
    return np.clip(cam.array, 0.0, 1.0).astype(np.float32)


@dataclass
class SynthesisSummary:
    """Outcome of a dataset run: keys synthesized, skipped (outputs existed) and failed (key -> reason)."""

    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    redone: list[str] = field(default_factory=list)  # outputs existed but came from another checkpoint/options/input
    missing_attention: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def merge(self, other: SynthesisSummary) -> None:
        self.succeeded += other.succeeded
        self.skipped += other.skipped
        self.redone += other.redone
        self.failed.update(other.failed)
        self.missing_attention += other.missing_attention
        self.seconds = max(self.seconds, other.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"succeeded": sorted(self.succeeded), "skipped": sorted(self.skipped), "redone": sorted(self.redone),
                "failed": dict(sorted(self.failed.items())), "missing_attention": sorted(self.missing_attention),
                "seconds": round(self.seconds, 2)}

    def report(self) -> str:
        """Multi-line human summary."""
        lines = [f"synthesis: {len(self.succeeded)} succeeded, {len(self.skipped)} skipped (already done), "
                 f"{len(self.failed)} failed in {self.seconds:.1f} s"]
        if self.redone:
            lines.append(f"  re-synthesized {len(self.redone)} vertebra(e) whose outputs came from another checkpoint, "
                         f"options or input, e.g. {sorted(self.redone)[0]}")
        if self.missing_attention:
            lines.append(f"  no attention map (zeros used) for {len(self.missing_attention)} vertebra(e), "
                         f"e.g. {sorted(self.missing_attention)[0]}")
        lines += [f"  FAILED {key}: {reason}" for key, reason in sorted(self.failed.items())]
        return "\n".join(lines)


class DatasetSynthesizer:
    """Synthesizes vertebrae of a crop folder with one (sagittal or coronal) or two (both) generators."""

    def __init__(self, opt: argparse.Namespace, device: torch.device) -> None:
        self.opt = opt
        self.device = device
        self.plane_mode = getattr(opt, "plane", "sagittal")
        self.layouts = output_layouts(synthesis_dir(opt), self.plane_mode)
        names = {"sagittal": opt.name, "coronal": opt.name}
        if self.plane_mode == "both":
            if not getattr(opt, "name_coronal", None):
                raise ValueError("--plane both needs --name_coronal (the coronal model's checkpoint name)")
            names["coronal"] = opt.name_coronal
        planes = list(PLANES) if self.plane_mode == "both" else [self.plane_mode]
        checkpoints_dir = getattr(opt, "checkpoints_dir", "./checkpoints")
        epoch, load_iter = getattr(opt, "epoch", "latest"), int(getattr(opt, "load_iter", 0) or 0)
        self.models = {plane: load_generator(checkpoint_file(checkpoints_dir, names[plane], epoch, load_iter),
                                             device, plane) for plane in planes}
        batch_size = resolve_batch_size(int(getattr(opt, "synthesis_batch_size", -1)), device)
        amp_dtype = autocast_dtype(device, bool(getattr(opt, "amp", False)), bool(getattr(opt, "cpu_bf16", False)),
                                   getattr(opt, "amp_dtype", "auto"))
        self.runners = {plane: GeneratorRunner(model.generator, device, batch_size, amp_dtype)
                        for plane, model in self.models.items()}
        self.run_provenance = {
            "checkpoints": {plane: {"path": str(model.path.resolve()), "sha256": file_sha256(model.path)}
                            for plane, model in self.models.items()},
            "options": {"plane": self.plane_mode, "amp_dtype": str(amp_dtype),
                        "protocol": getattr(opt, "protocol", None),
                        "cam_dir": str(Path(opt.cam_dir).resolve()) if getattr(opt, "cam_dir", None) else None},
        }

        if getattr(opt, "no_iterative", False):  # only when set, so records of earlier runs still match
            self.run_provenance["options"]["no_iterative"] = True

    def provenance(self, key: str) -> dict[str, Any]:
        """What the outputs of ``key`` depend on: checkpoint contents, options, and the input files' size/mtime."""
        paths = crop_paths(self.opt.dataroot, key)
        cam_dir = getattr(self.opt, "cam_dir", None)
        inputs = {"ct": file_signature(paths.ct), "label": file_signature(paths.label),
                  "cam": file_signature(Path(cam_dir) / f"{key}.nii.gz") if cam_dir else None}
        return {**self.run_provenance, "inputs": inputs}

    def exists(self, key: str) -> bool:
        return all(layout.exists(key) for layout in self.layouts.values())

    def done(self, key: str) -> bool:
        """Every output of ``key`` exists and was made from the current checkpoints, options and inputs."""
        provenance = self.provenance(key)
        return all(layout.done(key, provenance) for layout in self.layouts.values())

    def synthesize(self, key: str) -> bool:
        """Synthesize and write one vertebra; returns whether its attention map was found."""
        provenance = self.provenance(key)
        crop = load_crop(self.opt.dataroot, key)
        cam = load_attention(getattr(self.opt, "cam_dir", None), crop, crop_paths(self.opt.dataroot, key).label)
        row_spacing_mm = float(crop.spacing_mm[0])
        results: dict[str, PlaneSynthesis] = {}
        for plane, model in self.models.items():
            settings = settings_for(model.options, row_spacing_mm, self.opt,
                                    plane_pixel_area_mm2(crop.spacing_mm, plane))
            if settings.mask_height_px > crop.label_map.shape[0]:
                raise ValueError(f"{crop_paths(self.opt.dataroot, key).label}: band of {settings.mask_height_px} rows "
                                 f"exceeds the crop height {crop.label_map.shape[0]}")
            try:
                results[plane] = synthesize_plane(self.runners[plane], crop.ct_hu, crop.label_map, cam, crop.label,
                                                  plane, settings)
            except ValueError as err:
                raise ValueError(f"{crop_paths(self.opt.dataroot, key).label}: {err}") from None
        for plane, result in results.items():
            self.layouts[plane].write(key, result.ct_hu, result.label_map, crop.affine, provenance)
        if "fused" in self.layouts:
            ct, labels = fuse_planes(results["sagittal"], results["coronal"], crop.label)
            self.layouts["fused"].write(key, ct, labels, crop.affine, provenance)
        return cam is not None or not getattr(self.opt, "cam_dir", None)


def gather_summaries(summary: SynthesisSummary) -> SynthesisSummary:
    """Merge the summaries of all ranks over the Gloo control group (shards may finish far apart in time;
    a no-op outside ``torchrun``)."""
    gathered = gather_objects(summary)
    if len(gathered) == 1:
        return summary
    merged = SynthesisSummary()
    for part in gathered:
        if part is not None:
            merged.merge(part)
    return merged


def synthesize_dataset(opt: argparse.Namespace, show_progress: bool = True) -> SynthesisSummary:
    """Iterative synthesis of every vertebra of ``opt.dataroot`` (or of ``opt.split``) with the
    ``opt.name`` checkpoint(s); writes ``<synthesis_dir>/{CT_fake,label_fake}/<key>.nii.gz``
    (:func:`synthesis_dir`: ``opt.output_dir``, else ``<results_dir>/<name>``).

    Uses ``opt``: dataroot, cam_dir, name, results_dir, output_dir, plane (sagittal | coronal | both),
    name_coronal, checkpoints_dir, epoch, load_iter, gpu_ids, split, split_json, num_test, overwrite,
    synthesis_batch_size, amp and amp_dtype, cpu_bf16 (bfloat16 on CPU). Under ``torchrun`` (process group
    initialized by the caller, or RANK/WORLD_SIZE set) each rank takes every world_size-th vertebra; the
    returned summary covers all ranks when a process group is initialized. Checkpoint errors raise;
    per-vertebra errors are collected in the summary and the run continues.
    """
    started = time.perf_counter()
    rank, world_size = rank_and_size()
    device = resolve_device(getattr(opt, "gpu_ids", "-1"))
    synthesizer = DatasetSynthesizer(opt, device)
    if rank == 0:
        for layout in synthesizer.layouts.values():
            layout.prepare()
        prepare_output_dir(synthesis_dir(opt), "synthesis output folder (--results_dir/--name or --output_dir)")
    keys = select_keys(opt.dataroot, getattr(opt, "split", None), getattr(opt, "split_json", None))
    num_test = getattr(opt, "num_test", math.inf)
    if num_test != math.inf:
        keys = keys[: int(num_test)]
    split_names = getattr(opt, "split", None)
    listed_in = (getattr(opt, "split_json", None) or default_split_json(opt.dataroot)
                 if split_names and split_names != "all" else Path(opt.dataroot) / "label")
    require_listed_crops(opt.dataroot, keys, listed_in)
    summary = SynthesisSummary()
    if not getattr(opt, "cam_dir", None) and rank == 0:
        warnings.warn("no --cam_dir given: attention maps are all zeros (no fracture attention)", stacklevel=2)
    from tqdm import tqdm

    progress = tqdm(shard(keys, rank, world_size), desc=f"synthesis ({synthesizer.plane_mode})", unit="vertebra",
                    disable=not show_progress or rank != 0, dynamic_ncols=True)
    for key in progress:
        if not getattr(opt, "overwrite", False):
            if synthesizer.done(key):
                summary.skipped.append(key)
                continue
            if synthesizer.exists(key):
                summary.redone.append(key)
        progress.set_postfix_str(key)
        try:
            if not synthesizer.synthesize(key):
                summary.missing_attention.append(key)
            summary.succeeded.append(key)
        except (ImageIOError, ValueError, FileNotFoundError, OSError, RuntimeError) as err:
            summary.failed[key] = " ".join(str(err).split())
    summary.seconds = time.perf_counter() - started
    summary = gather_summaries(summary)
    if rank == 0:
        if summary.missing_attention:
            warnings.warn(f"{getattr(opt, 'cam_dir', None)}: no attention map for {len(summary.missing_attention)} "
                          f"vertebra(e) (e.g. {summary.missing_attention[0]}.nii.gz); used zeros", stacklevel=2)
        write_json(synthesis_dir(opt) / "synthesis_summary.json", summary.as_dict())
    return summary
