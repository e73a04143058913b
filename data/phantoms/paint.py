"""Painting the labelled bone and the discs into the RAS working grid (HU and VerSe labels).

Bodies (cortical shell ≈ 750-1000 HU, textured cancellous core ≈ 100-250 HU, sclerotic band under
a collapsed endplate), posterior elements (pedicles, lamina, spinous, transverse and articular
processes, all with the vertebra's label), discs (≈ 70-95 HU, unlabelled), the spinal canal with
cord and the unlabelled ribs of T1-T12. Each shape is drawn one local bounding box at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.labels import spine_rank
from data.phantoms.anatomy import (
    Vertebra,
    body_extent,
    cross_section,
    endplates,
    height_loss,
    posterior_elements,
    vertebra_corners,
)
from data.phantoms.geometry import WORLD_FRAME, Grid, capsule, local_block
from data.phantoms.layout import Body, rib_polylines


def texture_field(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A periodic, smoothed, unit-variance 3D noise field (sampled with wrap-around)."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size, size)), 1.0, mode="wrap")
    return ((noise - noise.mean()) / noise.std()).astype(np.float32)


def sample_texture(
    field: np.ndarray, coords: Sequence[np.ndarray], cell_mm: Sequence[float], offset: np.ndarray
) -> np.ndarray:
    """Texture values at local points (u, a, l arrays, mm) with cell sizes ``cell_mm``."""
    grid = [np.asarray(c, dtype=np.float32) / cell + off for c, cell, off in zip(coords, cell_mm, offset)]
    return ndimage.map_coordinates(field, grid, order=1, mode="grid-wrap").astype(np.float32)


@dataclass(frozen=True)
class VoxelStats:
    """Mean working-grid index (None when empty) and count of a set of voxels."""

    mean_index: np.ndarray | None
    count: int

    @classmethod
    def of(cls, selected: np.ndarray, slices: tuple[slice, slice, slice]) -> VoxelStats:
        """Statistics of the True voxels of ``selected``, a boolean sub-block at ``slices``."""
        index = np.argwhere(selected)
        if not len(index):
            return cls(None, 0)
        return cls(index.mean(axis=0) + np.array([s.start for s in slices]), len(index))


def label_stats(v: Vertebra, grid: Grid, mask: np.ndarray) -> VoxelStats:
    """Statistics of all voxels carrying the vertebra's label (body and posterior elements)."""
    world = vertebra_corners(v)
    start = np.clip(np.floor((world.min(axis=0) - grid.origin) / grid.spacing).astype(int), 0, grid.shape)
    stop = np.clip(np.ceil((world.max(axis=0) - grid.origin) / grid.spacing).astype(int) + 1, 0, grid.shape)
    slices = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    return VoxelStats.of(mask[slices] == v.label, slices)


def paint_body(v: Vertebra, grid: Grid, hu: np.ndarray, mask: np.ndarray, field: np.ndarray) -> VoxelStats:
    """Draw the vertebral body (cortical shell, textured cancellous core, sclerosis if fractured).

    Returns the mean working-grid index and the number of the body voxels.
    """
    reach = 0.5 * max(v.height_post_rim, v.height_ant_rim) + 1.0
    half_depth, half_width = 0.5 * v.depth + 1.0, 0.5 * v.width + 1.0
    block = local_block(grid, v.frame, (-reach, -half_depth, -half_width), (reach, half_depth, half_width))
    if block is None:
        return VoxelStats(None, 0)
    u, a, left = np.broadcast_arrays(block.u, block.a, block.left)
    top, bottom = endplates(v, a, left)
    section = cross_section(v, a, left)
    inside = (u <= top) & (u >= bottom) & (section <= 1.0) & (a >= -0.5 * v.depth)
    if not inside.any():
        return VoxelStats(None, 0)
    u, a, left, top, bottom, section = (x[inside] for x in (u, a, left, top, bottom, section))
    # Approximate signed distance to the body surface (mm, negative inside).
    depth_in = np.minimum.reduce(
        [top - u, u - bottom, (1.0 - np.sqrt(section)) * 0.5 * min(v.depth, v.width), a + 0.5 * v.depth]
    )
    texture = sample_texture(field, (u, a, left), (2.0, 1.0, 1.0), v.texture_offset)
    values = v.cancellous_hu + 40.0 * texture
    if v.fracture is not None:
        loss = height_loss(v, a, left)
        near_plate = np.minimum(top - u, u - bottom) < 4.0
        values += np.where(near_plate & (loss > 0.03), 130.0 * np.minimum(loss / 0.3, 1.0), 0.0)
    values = np.where(depth_in < 1.2, v.cortical_hu + 60.0 * texture, values)
    sub_hu, sub_mask = hu[block.slices], mask[block.slices]
    sub_hu[inside] = values
    sub_mask[inside] = v.label
    return VoxelStats.of(inside, block.slices)


def paint_posterior(v: Vertebra, grid: Grid, hu: np.ndarray, mask: np.ndarray, field: np.ndarray) -> None:
    """Draw the posterior elements (cortex ≈ 650-850 HU, core ≈ 300 HU) with the vertebra's label.

    Elements are drawn one bounding box at a time; where they overlap the lower value
    wins, so a shell of one element inside another stays core bone.
    """
    for element in posterior_elements(v):
        block = local_block(grid, v.frame, element.low, element.high)
        if block is None:
            continue
        distance = element.distance(block)
        inside = distance <= 0.0
        if not inside.any():
            continue
        u, a, left = (np.broadcast_to(x, inside.shape)[inside] for x in (block.u, block.a, block.left))
        texture = sample_texture(field, (u, a, left), (1.5, 1.5, 1.5), v.texture_offset + 7.0)
        values = np.where(distance[inside] > -1.0, v.cortical_hu - 120.0, 300.0) + 35.0 * texture
        sub_hu, sub_mask = hu[block.slices], mask[block.slices]
        mine = sub_mask[inside] == v.label
        values[mine] = np.minimum(values[mine], sub_hu[inside][mine])
        sub_hu[inside] = values
        sub_mask[inside] = v.label


def paint_ribs(v: Vertebra, body: Body, grid: Grid, hu: np.ndarray, field: np.ndarray) -> None:
    """Unlabelled ribs of thoracic vertebrae (cortex ≈ 650 HU, marrow ≈ 250 HU), as chains of rods."""
    radius = 3.5 if spine_rank(v.label) <= 12 else 4.0
    for line in rib_polylines(v, body):
        local = line @ WORLD_FRAME.rotation.T
        for p0, p1 in zip(local[:-1], local[1:]):
            rod = capsule(tuple(p0), tuple(p1), radius)
            block = local_block(grid, WORLD_FRAME, rod.low, rod.high)
            if block is None:
                continue
            distance = rod.distance(block)
            inside = distance <= 0.0
            if not inside.any():
                continue
            u, a, left = (np.broadcast_to(x, inside.shape)[inside] for x in (block.u, block.a, block.left))
            texture = sample_texture(field, (u, a, left), (1.5, 1.5, 1.5), v.texture_offset + 31.0)
            sub = hu[block.slices]
            sub[inside] = np.where(distance[inside] > -1.2, 650.0, 250.0) + 30.0 * texture


def paint_canal(v: Vertebra, grid: Grid, hu: np.ndarray) -> None:
    """Spinal canal contents (CSF ≈ 10 HU; cord ≈ 35 HU above L2, cauda equina ≈ 20 HU below)."""
    low = (-0.5 * v.height - 0.5 * v.disc_below - 1.0, v.canal_centre - v.canal_ap, -v.canal_lat)
    high = (0.5 * v.height + 0.5 * v.disc_above + 1.0, v.canal_centre + v.canal_ap, v.canal_lat)
    block = local_block(grid, v.frame, low, high)
    if block is None:
        return
    radial = ((block.a - v.canal_centre) / v.canal_ap) ** 2 + (block.left / v.canal_lat) ** 2
    along = (block.u >= low[0]) & (block.u <= high[0])
    canal = (radial <= 1.0) & along
    cord = (radial <= 0.22) & along
    sub = hu[block.slices]
    sub[canal] = 10.0
    sub[cord] = 35.0 if spine_rank(v.label) < 21 else 20.0


def paint_disc(upper: Vertebra, lower: Vertebra, grid: Grid, hu: np.ndarray, field: np.ndarray) -> None:
    """Intervertebral disc filling the space between two bodies (nucleus ≈ 70 HU, annulus ≈ 95 HU; unlabelled)."""
    reach = max(upper.depth, lower.depth, upper.width, lower.width) * 0.5 + 1.0
    upper_low = body_extent(upper)[1]
    span = upper.disc_below + body_extent(lower)[0] - body_extent(lower)[1] + upper.height
    block = local_block(grid, upper.frame, (upper_low - span, -reach, -reach), (upper.height * 0.5, reach, reach))
    if block is None:
        return
    world = [block.u, block.a, block.left]
    # Local coordinates of the same voxels in the lower vertebra's frame.
    rel_rot = lower.frame.rotation @ upper.frame.rotation.T
    shift = (upper.frame.origin - lower.frame.origin) @ lower.frame.rotation.T
    lu, la, ll = (sum(world[k] * np.float32(rel_rot[r, k]) for k in range(3)) + np.float32(shift[r]) for r in range(3))
    _, upper_bottom = endplates(upper, block.a, block.left)
    lower_top, _ = endplates(lower, la, ll)
    section = np.minimum(cross_section(upper, block.a, block.left), cross_section(lower, la, ll))
    disc = (block.u <= upper_bottom) & (lu >= lower_top) & (section <= 1.0)
    if not disc.any():
        return
    u, a, left = (np.broadcast_to(x, disc.shape)[disc] for x in (block.u, block.a, block.left))
    texture = sample_texture(field, (u, a, left), (3.0, 3.0, 3.0), upper.texture_offset + 19.0)
    hu[block.slices][disc] = np.where(section[disc] < 0.35, 70.0, 95.0) + 8.0 * texture


