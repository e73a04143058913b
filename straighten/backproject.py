"""Map results on a straightened crop back onto the source scan's voxel grid (the sidecars of
docs/design.md, 'Straightened crops').

A crop's sidecar records its centre line and sampling; :func:`straighten.frames.world_to_crop_voxel`
inverts the sampling. Here every voxel of the scan that the crop covers is mapped to its continuous
crop index and the crop volume is interpolated there (linear for CT, nearest for labels), so a
synthesized CT or a label map drawn on the crop can be shown over the original scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from data.image_io import voxel_to_world, world_to_voxel
from straighten.frames import crop_voxel_to_world, world_to_crop_voxel

FOOTPRINT_SAMPLES = 9  # crop points per axis whose scan positions bound the crop's footprint


@dataclass(frozen=True)
class ScanFootprint:
    """The scan voxels a crop covers: a box of the scan grid and, per box voxel, its crop index.

    box: slices into the scan array. crop_index: (3, *box shape) continuous crop voxel indices
    (axes S->I, A->P, R->L). inside: (*box shape) bool, the voxel lies within the crop.
    """

    box: tuple[slice, slice, slice]
    crop_index: np.ndarray
    inside: np.ndarray


def scan_footprint(sidecar: dict[str, Any], scan_shape: tuple[int, ...], scan_affine: np.ndarray,
                   region: tuple[np.ndarray, np.ndarray] | None = None) -> ScanFootprint:
    """Where the crop of ``sidecar`` (or its ``region``) lies in the scan of ``scan_shape``/``scan_affine``.

    ``scan_affine`` maps scan voxels to RAS mm. ``region`` = (first, last) crop voxel indices
    (inclusive, 3 each) limits the footprint to a sub-box of the crop (e.g. one vertebra).
    """
    crop_size = np.asarray(sidecar["crop_size"], dtype=np.float64)
    first = np.zeros(3) if region is None else np.clip(np.asarray(region[0], dtype=np.float64), 0, crop_size - 1)
    last = crop_size - 1 if region is None else np.clip(np.asarray(region[1], dtype=np.float64), 0, crop_size - 1)
    axes = [np.linspace(a - 0.5, b + 0.5, FOOTPRINT_SAMPLES) for a, b in zip(first, last)]
    samples = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    scan_points = world_to_voxel(scan_affine, crop_voxel_to_world(sidecar, samples))
    low = np.clip(np.floor(scan_points.min(axis=0)).astype(int) - 1, 0, None)
    high = np.minimum(np.ceil(scan_points.max(axis=0)).astype(int) + 2, np.asarray(scan_shape[:3]))
    box = tuple(slice(int(a), int(max(a, b))) for a, b in zip(low, high))
    grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
    shape = grid.shape[:3]
    crop_index = world_to_crop_voxel(sidecar, voxel_to_world(scan_affine, grid.reshape(-1, 3))).T.reshape(3, *shape)
    inside = np.all((crop_index > first[:, None, None, None] - 0.5) & (crop_index < last[:, None, None, None] + 0.5),
                    axis=0)
    return ScanFootprint(box, crop_index, inside)


def sample_crop(volume: np.ndarray, footprint: ScanFootprint, order: int, fill: float = 0.0) -> np.ndarray:
    """``volume`` (crop grid) interpolated at the footprint's scan voxels: (*box shape); ``fill`` outside the crop.

    ``order`` 1 = linear (CT), 0 = nearest (labels, masks).
    """
    values = ndimage.map_coordinates(np.asarray(volume, dtype=np.float32), footprint.crop_index.reshape(3, -1),
                                     order=order, mode="nearest", prefilter=False).reshape(footprint.inside.shape)
    return np.where(footprint.inside, values, np.float32(fill))
