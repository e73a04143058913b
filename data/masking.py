"""Masked-slice construction (docs/design.md, 'Masked slice'): the one implementation used by training and inference.

A 2-D slice has rows along the height axis (superior -> inferior) and columns along the other
in-plane axis. For the target vertebra's rows [x1, x2] (inclusive, after removing connected
components smaller than ``min_component_px``) and h = x2 - x1, a band of M rows
(``mask_height_px``) is centred at c = (x1 + x2) // 2 and clamped to the image. Outside the band
the slice keeps the rows just above x1 (above the band) and the rows from x2 downwards (below the
band), so the neighbours abut the band and the target is gone; the band holds ``fill_value``.
The neighbour-label slice and the attention map are shifted the same way.

Slices are sampled from the central 4/5 of the target's extent along the slicing axis with
triangular weights peaking at the centre; the offset ratio r = |z - z_c| / extent * 2 is an input
plane of the generator.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from data.image_io import DEFAULT_WINDOW_HU
from data.morphology import remove_small_components, row_extent
from data.planes import plane_axes
from util.cli import add_option
from util.settings import FromOptions

# band of the masked CT, windowed units: the reference's uint8 0 (docs/design.md, 'Masked slice')
BAND_FILL_VALUE = -1.0
CENTRAL_FRACTION = 0.8  # slices are sampled from the central 4/5 of the target's extent
MIN_COMPONENT_PX = 50  # pixels of one 2-D slice
MIN_ISLAND_VOXELS = 50  # voxels of a 3-D slab: smaller target islands do not widen the slice range
CT_CANVAS_FILL = -1.0  # windowed value of canvas columns outside a coronal slice (window floor)


@dataclass(frozen=True)
class MaskingSettings(FromOptions):
    """How a slice is masked (docs/design.md, 'Masked slice'); the defaults of ``--mask_height``,
    ``--min_component_px`` and ``--hu_window``.

    mask_height_mm: band height M in mm (``--mask_height``); :meth:`mask_height_px` converts it to rows.
    min_component_px: per-slice target components smaller than this many pixels are ignored.
    min_island_voxels: 3-D target islands smaller than this many voxels do not count for the slice range.
    hu_window: CT window (HU) mapped to [-1, 1].
    """

    mask_height_mm: float = field(default=40.0, metadata={"option": "mask_height"})
    min_component_px: int = MIN_COMPONENT_PX
    min_island_voxels: int = MIN_ISLAND_VOXELS
    hu_window: tuple[float, float] = DEFAULT_WINDOW_HU

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_height_mm", float(self.mask_height_mm))
        object.__setattr__(self, "min_component_px", int(self.min_component_px))
        object.__setattr__(self, "min_island_voxels", int(self.min_island_voxels))
        object.__setattr__(self, "hu_window", (float(self.hu_window[0]), float(self.hu_window[1])))
        if not self.mask_height_mm > 0:
            raise ValueError(f"--mask_height {self.mask_height_mm}: expected a positive height in mm")

    def mask_height_px(self, row_spacing_mm: float) -> int:
        """Band height in rows at ``row_spacing_mm`` (mm per row, axis 0)."""
        return mask_height_rows(self.mask_height_mm, row_spacing_mm)


def mask_height_rows(mask_height_mm: float, row_spacing_mm: float) -> int:
    """Band height in rows for ``mask_height_mm`` at ``row_spacing_mm`` (rounded, at least 1)."""
    if not row_spacing_mm > 0:
        raise ValueError(f"row spacing {row_spacing_mm} mm: expected a positive spacing")
    return max(1, int(round(mask_height_mm / row_spacing_mm)))


def add_mask_height_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--mask_height`` (mm), the one definition shared by the model and dataset flags."""
    add_option(parser, "--mask_height", type=float, default=MaskingSettings.mask_height_mm,
               help="height of the masked band in mm (converted to rows with the crops' row spacing; the height "
                    "heads predict within the band's rows)")
    return parser


def add_masking_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of :class:`MaskingSettings` (those already defined are kept)."""
    add_option(parser, "--hu_window", type=float, nargs=2, default=list(MaskingSettings.hu_window),
               metavar=("LOW", "HIGH"), help="CT window in HU mapped to [-1, 1]")
    add_mask_height_option(parser)
    add_option(parser, "--min_component_px", type=int, default=MaskingSettings.min_component_px,
               help="target components smaller than this (pixels per slice) are ignored")
    return parser


@dataclass(frozen=True)
class TargetSlices:
    """Slices of a target along a slicing axis (inclusive indices): its extent [first, last] and the
    central range [start, stop] that training samples, synthesis replaces and the generation metrics score."""

    first: int
    last: int
    start: int
    stop: int

    @property
    def indices(self) -> np.ndarray:
        """The central slices start..stop as an int array."""
        return np.arange(self.start, self.stop + 1)


def target_slices(label_slices: np.ndarray, target_label: int, min_island_voxels: int = MIN_ISLAND_VOXELS,
                  fraction: float = CENTRAL_FRACTION) -> TargetSlices | None:
    """The one slice selection: extent of ``target_label`` in an (N, H, W) stack after dropping 3-D islands
    under ``min_island_voxels`` voxels, and its central ``fraction``; ``None`` when the target is absent."""
    extent = target_slice_extent(label_slices, target_label, min_island_voxels)
    if extent is None:
        return None
    first, last = extent
    start, stop = central_slice_range(first, last, fraction)
    return TargetSlices(first, last, start, stop)


@dataclass
class MaskedSlice:
    """One masked slice; images (H, W) float32, rows are the height axis (superior -> inferior).

    masked_ct: CT with the target cut out and the band set to the fill value (same units as the input).
    band_mask: 1 inside the band rows [band_top, band_top + M), else 0.
    neighbour_label: shifted mask (0/1) of the neighbouring vertebrae (``neighbour_labels``, target excluded).
    cam: shifted attention map (zeros when none was given); 0 in the band.
    target_label_mask: mask (0/1) of the target in the original (unshifted) slice, small components removed.
    target_top, target_bottom: inclusive rows x1, x2 of the target in the original slice.
    band_top: first band row; band_centre: band_top + M // 2; height_px: x2 - x1 (rows).
    """

    masked_ct: np.ndarray
    band_mask: np.ndarray
    neighbour_label: np.ndarray
    cam: np.ndarray
    target_label_mask: np.ndarray
    target_top: int
    target_bottom: int
    band_top: int
    band_centre: int
    height_px: int


@dataclass
class MaskedSliceBatch:
    """Masked slices of many slices of one vertebra; images (N, H, W) float32, rows (N,) int64.

    ``valid[n]`` is False where slice n has no target left after component removal or the target
    does not fit in the band; the images of invalid slices are all ``fill_value``/zero and their
    rows are -1.
    """

    masked_ct: np.ndarray
    band_mask: np.ndarray
    neighbour_label: np.ndarray
    cam: np.ndarray
    target_label_mask: np.ndarray
    target_top: np.ndarray
    target_bottom: np.ndarray
    band_top: np.ndarray
    band_centre: np.ndarray
    height_px: np.ndarray
    valid: np.ndarray

    def item(self, n: int) -> MaskedSlice | None:
        """Slice ``n`` as a :class:`MaskedSlice` (``None`` when it is not valid)."""
        if not self.valid[n]:
            return None
        return MaskedSlice(self.masked_ct[n], self.band_mask[n], self.neighbour_label[n], self.cam[n],
                           self.target_label_mask[n], int(self.target_top[n]), int(self.target_bottom[n]),
                           int(self.band_top[n]), int(self.band_centre[n]), int(self.height_px[n]))


def band_top_row(target_top: np.ndarray | int, target_bottom: np.ndarray | int, mask_height_px: int,
                 image_rows: int) -> np.ndarray:
    """First band row: the M-row band centred at (x1 + x2) // 2, clamped into [0, image_rows - M]."""
    centre = (np.asarray(target_top) + np.asarray(target_bottom)) // 2
    return np.clip(centre - mask_height_px // 2, 0, image_rows - mask_height_px)


def shifted_row_sources(target_top: np.ndarray, target_bottom: np.ndarray, band_top: np.ndarray,
                        mask_height_px: int, image_rows: int) -> np.ndarray:
    """(N, image_rows) source row of every output row of the masked slice; -1 inside the band.

    Output rows above the band come from the rows just above x1, rows below it from x2 downwards.
    """
    rows = np.arange(image_rows)[None, :]
    top = np.asarray(target_top)[:, None]
    bottom = np.asarray(target_bottom)[:, None]
    band_start = np.asarray(band_top)[:, None]
    band_stop = band_start + mask_height_px
    sources = np.where(rows < band_start, top - band_start + rows, bottom + rows - band_stop)
    return np.where((rows >= band_start) & (rows < band_stop), -1, sources)


def gather_rows(images: np.ndarray, sources: np.ndarray, fill_value: float) -> np.ndarray:
    """``out[n, r] = images[n, sources[n, r]]`` (float32, whole rows), ``fill_value`` where the source is -1."""
    safe = np.clip(sources, 0, images.shape[1] - 1)
    out = np.asarray(images)[np.arange(len(safe))[:, None], safe].astype(np.float32, copy=False)
    out[sources < 0] = fill_value
    return out


def target_masks(label_slices: np.ndarray, target_label: int, min_component_px: int) -> np.ndarray:
    """(N, H, W) bool masks of ``target_label`` per slice, components under ``min_component_px`` removed."""
    masks = np.asarray(label_slices) == target_label
    for n in np.flatnonzero(masks.any(axis=(1, 2))):
        rows = np.flatnonzero(masks[n].any(axis=1))
        cols = np.flatnonzero(masks[n].any(axis=0))
        box = (n, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # components lie inside the box
        masks[box] = remove_small_components(masks[box], min_component_px)
    return masks


def target_row_extents(label_slices: np.ndarray, target_label: int,
                       min_component_px: int = MIN_COMPONENT_PX) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive target rows (x1, x2) per slice of an (N, H, W) stack; -1 where the target is absent."""
    masks = target_masks(label_slices, target_label, min_component_px)
    return _row_extents(masks)


def _row_extents(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = np.full(len(masks), -1, dtype=np.int64)
    bottom = np.full(len(masks), -1, dtype=np.int64)
    for n, mask in enumerate(masks):
        extent = row_extent(mask)
        if extent is not None:
            top[n], bottom[n] = extent
    return top, bottom


def fits_in_band(target_top: np.ndarray, target_bottom: np.ndarray, mask_height_px: int,
                 image_rows: int) -> np.ndarray:
    """True where the target is present and its rows [x1, x2] lie inside the clamped band."""
    top = np.asarray(target_top)
    bottom = np.asarray(target_bottom)
    band_top = band_top_row(top, bottom, mask_height_px, image_rows)
    return (top >= 0) & (top >= band_top) & (bottom <= band_top + mask_height_px)


def make_masked_slices(ct_slices: np.ndarray, label_slices: np.ndarray, target_label: int,
                       cam_slices: np.ndarray | None, mask_height_px: int,
                       min_component_px: int = MIN_COMPONENT_PX, *,
                       neighbour_labels: Collection[int] | None = None,
                       fill_value: float = BAND_FILL_VALUE, target_is_neighbour: bool = False) -> MaskedSliceBatch:
    """Masked slices (docs/design.md, 'Masked slice') of an (N, H, W) stack of slices of one vertebra, vectorized.

    Args:
        ct_slices: (N, H, W) CT, rows superior -> inferior (any units; windowed [-1, 1] in training).
        label_slices: (N, H, W) integer VerSe labels on the same grid.
        target_label: VerSe id of the vertebra to cut out.
        cam_slices: (N, H, W) attention maps in [0, 1], or ``None`` for no attention (zeros).
        mask_height_px: band height M in rows (``--mask_height`` mm / row spacing).
        min_component_px: target components smaller than this (pixels, 8-connected) are ignored.
        neighbour_labels: labels that count as neighbours in ``neighbour_label``; ``None`` = every
            non-zero label. The target is not a neighbour unless ``target_is_neighbour``.
        fill_value: value of the masked CT inside the band.
        target_is_neighbour: keep target pixels in ``neighbour_label`` when they are in
            ``neighbour_labels`` (the reference's ``normal_vert``: its row x2 shows at row band_top + M).
    """
    ct_slices = np.asarray(ct_slices)
    label_slices = np.asarray(label_slices)
    if ct_slices.ndim != 3 or ct_slices.shape != label_slices.shape:
        raise ValueError(f"make_masked_slices: CT {ct_slices.shape} and label {label_slices.shape} "
                         "must be (N, H, W) stacks of the same shape")
    if cam_slices is not None and np.shape(cam_slices) != ct_slices.shape:
        raise ValueError(f"make_masked_slices: attention map {np.shape(cam_slices)} differs from CT {ct_slices.shape}")
    count, rows, _ = ct_slices.shape
    if not 0 < mask_height_px <= rows:
        raise ValueError(f"make_masked_slices: mask height {mask_height_px} px must be in 1..{rows} (image rows)")
    target = target_masks(label_slices, target_label, min_component_px)
    top, bottom = _row_extents(target)
    valid = fits_in_band(top, bottom, mask_height_px, rows)
    top = np.where(valid, top, -1)
    bottom = np.where(valid, bottom, -1)
    band_top = np.where(valid, band_top_row(top, bottom, mask_height_px, rows), -1)
    sources = shifted_row_sources(top, bottom, band_top, mask_height_px, rows)
    sources[~valid] = -1
    if neighbour_labels is None:
        neighbours = label_slices > 0
    else:
        neighbours = np.isin(label_slices, np.fromiter(neighbour_labels, dtype=np.int64))
    if not target_is_neighbour:
        neighbours &= label_slices != target_label
    band_rows = (sources < 0) & valid[:, None]
    band_mask = np.repeat(band_rows[:, :, None], ct_slices.shape[2], axis=2).astype(np.float32)
    target_out = target.astype(np.float32)
    target_out[~valid] = 0.0
    cam = (gather_rows(cam_slices, sources, 0.0) if cam_slices is not None
           else np.zeros(ct_slices.shape, dtype=np.float32))
    return MaskedSliceBatch(
        masked_ct=gather_rows(ct_slices, sources, fill_value),
        band_mask=band_mask,
        neighbour_label=gather_rows(neighbours, sources, 0.0),
        cam=cam,
        target_label_mask=target_out,
        target_top=top,
        target_bottom=bottom,
        band_top=band_top,
        band_centre=np.where(valid, band_top + mask_height_px // 2, -1),
        height_px=np.where(valid, bottom - top, -1),
        valid=valid,
    )


def extend_band_rows(band_mask: np.ndarray, band_top: np.ndarray, mask_height_px: int,
                     extra_rows: int = 1) -> np.ndarray:
    """Copy of an (N, H, W) band mask that also marks the ``extra_rows`` rows after each band (clipped
    to the image; rows of ``band_top`` < 0, i.e. invalid slices, unchanged). The reference's inference
    marks rows band_top .. band_top + M inclusive (41 rows for M = 40) while the CT band stays M rows."""
    out = np.array(band_mask, copy=True)
    rows = np.arange(out.shape[1])[None, :]
    start = np.asarray(band_top)[:, None]
    extra = (start >= 0) & (rows >= start + mask_height_px) & (rows < start + mask_height_px + extra_rows)
    out[extra] = 1.0
    return out


def make_masked_slice(ct_slice: np.ndarray, label_slice: np.ndarray, target_label: int,
                      cam_slice: np.ndarray | None, mask_height_px: int,
                      min_component_px: int = MIN_COMPONENT_PX, *,
                      neighbour_labels: Collection[int] | None = None,
                      fill_value: float = BAND_FILL_VALUE, target_is_neighbour: bool = False) -> MaskedSlice | None:
    """Masked slice (docs/design.md, 'Masked slice') of one (H, W) slice; ``None`` when the target is absent or taller
    than the band.

    See :func:`make_masked_slices` for the arguments (single slices instead of stacks).
    """
    cam = None if cam_slice is None else np.asarray(cam_slice)[None]
    batch = make_masked_slices(np.asarray(ct_slice)[None], np.asarray(label_slice)[None], target_label, cam,
                               mask_height_px, min_component_px, neighbour_labels=neighbour_labels,
                               fill_value=fill_value, target_is_neighbour=target_is_neighbour)
    return batch.item(0)


def target_slice_extent(label_slices: np.ndarray, target_label: int,
                        min_island_voxels: int = MIN_ISLAND_VOXELS) -> tuple[int, int] | None:
    """First and last slice (inclusive) of an (N, H, W) stack holding the target, ignoring 3-D islands
    smaller than ``min_island_voxels`` voxels; ``None`` when the target is absent."""
    mask = remove_small_components(np.asarray(label_slices) == target_label, min_island_voxels)
    return row_extent(mask)


def central_slice_range(first: int, last: int, fraction: float = CENTRAL_FRACTION) -> tuple[int, int]:
    """Inclusive range of the central ``fraction`` of the slices [first, last] (at least one slice)."""
    extent = last - first + 1
    kept = max(1, int(extent * fraction))
    start = first + (extent - kept) // 2
    return start, start + kept - 1


def slice_centre(first: int, last: int, fraction: float = CENTRAL_FRACTION) -> int:
    """Centre slice z_c of the target extent [first, last] (centre of its central range)."""
    start, stop = central_slice_range(first, last, fraction)
    return (start + stop) // 2


def slice_offset_ratio(index: int | np.ndarray, first: int, last: int,
                       fraction: float = CENTRAL_FRACTION) -> np.ndarray | float:
    """Offset plane value r = |z - z_c| / (last - first + 1) * 2 of slice ``index`` (unitless)."""
    ratio = np.abs(np.asarray(index) - slice_centre(first, last, fraction)) / (last - first + 1) * 2.0
    return float(ratio) if np.ndim(ratio) == 0 else ratio


def slice_sampling_weights(first: int, last: int,
                           fraction: float = CENTRAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Candidate slices of the central range and their triangular probabilities (peak at z_c)."""
    start, stop = central_slice_range(first, last, fraction)
    indices = np.arange(start, stop + 1)
    centre = (start + stop) // 2
    weights = 1.0 - np.abs(indices - centre) / max(stop - start, 1)
    return indices, weights / weights.sum()


def plane_slab(volume: np.ndarray, plane: str) -> np.ndarray:
    """View of a crop (S->I, A->P, R->L) as a stack of 2-D slices (N, rows, cols), rows superior -> inferior.

    sagittal: slices ``volume[:, :, z]`` (cols A->P); coronal: slices ``volume[:, y, :]`` (cols R->L).
    """
    return np.moveaxis(volume, plane_axes(plane).slice_axis, 0)


def canvas_width(crop_shape: tuple[int, int, int]) -> int:
    """Width of the 2-D canvas: sagittal slices keep their A->P width, coronal slices are pasted onto it.

    Both planes then give images of the same size (square for the default 256 x 256 x 64 crops).
    """
    return max(int(crop_shape[1]), int(crop_shape[2]))


def paste_columns(slices: np.ndarray, width: int, fill_value: float) -> np.ndarray:
    """Centre (…, rows, cols) images on a canvas ``width`` columns wide filled with ``fill_value``."""
    cols = slices.shape[-1]
    if cols == width:
        return slices
    if cols > width:
        raise ValueError(f"paste_columns: {cols} columns do not fit a canvas {width} wide")
    left = (width - cols) // 2
    canvas = np.full(slices.shape[:-1] + (width,), fill_value, dtype=slices.dtype)
    canvas[..., left:left + cols] = slices
    return canvas
