"""Frames and grids of the phantom: local vertebra frames, the RAS working grid, boxes of voxels, distances.

Every shape is tested at voxel centres in a vertebra's local frame (u = superior, a = anterior,
l = left, mm). ``local_block`` maps the voxels of a local bounding box into that frame, so painting
is vectorised one box at a time. The working grid is in RAS axis order; ``ras_spacing_and_shape``
converts per-output-axis spacing and shape to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from nibabel import orientations as nio


@dataclass(frozen=True)
class Frame:
    """A vertebra's local frame: origin (RAS mm) and rows superior, anterior, left (unit vectors)."""

    origin: np.ndarray
    rotation: np.ndarray  # (3, 3), rows = superior, anterior, left

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """Local (u, a, l) mm points (N, 3) -> RAS mm (N, 3)."""
        return self.origin + np.asarray(local, dtype=np.float64) @ self.rotation


@dataclass(frozen=True)
class Grid:
    """The RAS-ordered working grid: voxel (i, j, k) centre = origin + (i, j, k) * spacing (mm)."""

    origin: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]

    def axis_mm(self, axis: int, start: int, stop: int) -> np.ndarray:
        """World coordinate (mm) of voxel centres ``start..stop-1`` along RAS axis ``axis``."""
        return self.origin[axis] + np.arange(start, stop, dtype=np.float64) * self.spacing[axis]

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS affine of the working grid."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine


@dataclass
class Block:
    """A box of the working grid with each voxel's local coordinates (float32, mm)."""

    slices: tuple[slice, slice, slice]
    u: np.ndarray
    a: np.ndarray
    left: np.ndarray


def box_corners(low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """The 8 corners (8, 3) of the box [low, high]."""
    return np.array([[c0, c1, c2] for c0 in (low[0], high[0]) for c1 in (low[1], high[1]) for c2 in (low[2], high[2])])


def local_block(grid: Grid, frame: Frame, low: Sequence[float], high: Sequence[float]) -> Block | None:
    """Voxels whose centres may lie in the local box [low, high] (u, a, l mm), with local coordinates."""
    world = frame.to_world(box_corners(low, high))
    start = np.ceil((world.min(axis=0) - grid.origin) / grid.spacing).astype(int)
    stop = np.floor((world.max(axis=0) - grid.origin) / grid.spacing).astype(int) + 1
    start = np.clip(start, 0, grid.shape)
    stop = np.clip(stop, 0, grid.shape)
    if np.any(stop <= start):
        return None
    relative = [
        (grid.axis_mm(k, start[k], stop[k]) - frame.origin[k]).astype(np.float32).reshape(
            [-1 if j == k else 1 for j in range(3)]
        )
        for k in range(3)
    ]
    rot = frame.rotation.astype(np.float32)
    local = [relative[0] * rot[r, 0] + relative[1] * rot[r, 1] + relative[2] * rot[r, 2] for r in range(3)]
    return Block(tuple(slice(int(s), int(e)) for s, e in zip(start, stop)), *local)


def segment_distance(block: Block, p0: Sequence[float], p1: Sequence[float], l_scale: float = 1.0) -> np.ndarray:
    """Distance (mm) of each block voxel to the local segment p0-p1; the l axis is stretched by ``l_scale``."""
    p0 = np.asarray(p0, dtype=np.float32)
    d = np.asarray(p1, dtype=np.float32) - p0
    d[2] *= l_scale
    du, da, dl = block.u - p0[0], block.a - p0[1], (block.left - p0[2]) * l_scale
    t = np.clip((du * d[0] + da * d[1] + dl * d[2]) / float(d @ d), 0.0, 1.0)
    return np.sqrt((du - t * d[0]) ** 2 + (da - t * d[1]) ** 2 + (dl - t * d[2]) ** 2)


@dataclass(frozen=True)
class Element:
    """A posterior element: local bounding box (u, a, l mm) and its approximate signed distance (mm, <= 0 inside)."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]
    distance: Callable[[Block], np.ndarray]


def capsule(p0: Sequence[float], p1: Sequence[float], radius: float, half_width: float | None = None) -> Element:
    """A rounded rod from p0 to p1 (local mm); ``half_width`` flattens it along l (a plate)."""
    half_l = radius if half_width is None else half_width
    pad = np.array([radius, radius, half_l]) + 0.5
    low = tuple(np.minimum(p0, p1) - pad)
    high = tuple(np.maximum(p0, p1) + pad)
    return Element(low, high, lambda b: segment_distance(b, p0, p1, l_scale=radius / half_l) - radius)


WORLD_FRAME = Frame(np.zeros(3), np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]))


def output_to_ras(orientation: str) -> np.ndarray:
    """nibabel orientation transform from the output axis codes to RAS."""
    return nio.ornt_transform(nio.axcodes2ornt(tuple(orientation)), nio.axcodes2ornt(("R", "A", "S")))


def ras_spacing_and_shape(
    orientation: str, spacing: Sequence[float], shape: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Spacing (and shape) per RAS axis from the values per output array axis."""
    ornt = output_to_ras(orientation)
    ras_spacing, ras_shape = np.zeros(3), np.zeros(3, dtype=int)
    for axis, (target, _) in enumerate(ornt.astype(int)):
        ras_spacing[target] = spacing[axis]
        if shape is not None:
            ras_shape[target] = shape[axis]
    return ras_spacing, (ras_shape if shape is not None else None)

