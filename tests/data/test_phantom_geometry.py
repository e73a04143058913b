"""data.phantoms.geometry: local frames, the RAS working grid and voxel boxes, in millimetres."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from data.phantoms.geometry import (
    WORLD_FRAME,
    Frame,
    Grid,
    capsule,
    local_block,
    ras_spacing_and_shape,
    segment_distance,
)


def tilted_frame() -> Frame:
    """A frame at (3, -4, 12) mm whose axes are turned by 20 / -15 / 10 degrees (rows: superior, anterior, left)."""
    rotation = Rotation.from_euler("xyz", [20.0, -15.0, 10.0], degrees=True).as_matrix().T
    return Frame(np.array([3.0, -4.0, 12.0]), rotation)


def small_grid() -> Grid:
    return Grid(np.array([-20.0, -25.0, -10.0]), np.array([0.8, 1.0, 1.5]), (50, 48, 30))


def test_frame_maps_local_millimetres_along_its_axes() -> None:
    frame = tilted_frame()
    assert np.allclose(frame.rotation @ frame.rotation.T, np.eye(3))
    local = np.array([[10.0, 0.0, 0.0], [0.0, -5.0, 0.0], [1.0, 2.0, 3.0]])
    world = frame.to_world(local)
    assert np.allclose(world[0], frame.origin + 10.0 * frame.rotation[0])
    assert np.allclose(world[1], frame.origin - 5.0 * frame.rotation[1])
    assert np.allclose(np.linalg.norm(world - frame.origin, axis=1), np.linalg.norm(local, axis=1))


def test_world_frame_superior_is_ras_s_and_left_is_minus_r() -> None:
    assert np.allclose(WORLD_FRAME.to_world(np.array([[1.0, 0.0, 0.0]])), [[0.0, 0.0, 1.0]])
    assert np.allclose(WORLD_FRAME.to_world(np.array([[0.0, 1.0, 0.0]])), [[0.0, 1.0, 0.0]])
    assert np.allclose(WORLD_FRAME.to_world(np.array([[0.0, 0.0, 1.0]])), [[-1.0, 0.0, 0.0]])


def test_grid_voxel_centres_and_affine() -> None:
    grid = small_grid()
    assert np.allclose(grid.axis_mm(1, 3, 6), [-22.0, -21.0, -20.0])
    assert np.allclose(grid.affine @ [2, 3, 4, 1], [-20.0 + 1.6, -25.0 + 3.0, -10.0 + 6.0, 1.0])


def test_local_block_gives_each_voxels_local_coordinates_and_covers_the_box() -> None:
    grid, frame = small_grid(), tilted_frame()
    low, high = (-6.0, -4.0, -3.0), (5.0, 7.0, 4.0)
    block = local_block(grid, frame, low, high)
    assert block is not None
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = (grid.affine @ np.c_[index, np.ones(len(index))].T).T[:, :3]
    local = (world - frame.origin) @ frame.rotation.T  # brute force: every voxel of the grid
    inside = np.all((local >= low) & (local <= high), axis=1)
    in_block = np.all([(index[:, k] >= s.start) & (index[:, k] < s.stop) for k, s in enumerate(block.slices)], axis=0)
    assert inside.any() and not np.any(inside & ~in_block)  # the block holds every voxel centre of the box
    u, a, left = np.broadcast_arrays(block.u, block.a, block.left)
    sub = local[in_block].reshape(*u.shape, 3)
    assert np.allclose(np.stack([u, a, left], axis=-1), sub, atol=1e-4)  # float32 mm


def test_local_block_outside_the_grid_is_none() -> None:
    assert local_block(small_grid(), WORLD_FRAME, (500.0, 0.0, 0.0), (510.0, 5.0, 5.0)) is None


def test_segment_distance_matches_point_to_segment_distance() -> None:
    grid, frame = small_grid(), tilted_frame()
    block = local_block(grid, frame, (-8.0, -8.0, -8.0), (8.0, 8.0, 8.0))
    p0, p1 = np.array([-3.0, 1.0, -2.0]), np.array([4.0, -2.0, 3.0])
    points = np.stack(np.broadcast_arrays(block.u, block.a, block.left), axis=-1).reshape(-1, 3).astype(np.float64)
    t = np.clip((points - p0) @ (p1 - p0) / ((p1 - p0) @ (p1 - p0)), 0.0, 1.0)
    expected = np.linalg.norm(points - (p0 + t[:, None] * (p1 - p0)), axis=1)
    assert np.allclose(segment_distance(block, p0, p1).reshape(-1), expected, atol=1e-3)


def test_capsule_is_negative_within_its_radius_and_its_box_holds_it() -> None:
    rod = capsule((0.0, 0.0, 0.0), (10.0, 0.0, 0.0), radius=2.0)
    block = local_block(small_grid(), WORLD_FRAME, (-10.0, -10.0, -10.0), (20.0, 10.0, 10.0))
    distance = rod.distance(block)
    u, a, left = np.broadcast_arrays(block.u, block.a, block.left)
    radial = np.hypot(a, left)
    along = (u >= 0.0) & (u <= 10.0)
    assert np.all(distance[along & (radial < 1.9)] < 0.0)
    assert np.all(distance[radial > 2.1] > 0.0)
    inside = distance <= 0.0
    assert np.all((u[inside] >= rod.low[0]) & (u[inside] <= rod.high[0]))
    assert np.all((np.abs(a[inside]) <= rod.high[1]) & (np.abs(left[inside]) <= rod.high[2]))


@pytest.mark.parametrize("orientation, expected", [("RAS", (1.0, 1.5, 1.2)), ("PIR", (1.2, 1.0, 1.5)),
                                                   ("SPR", (1.2, 1.5, 1.0)), ("LPI", (1.0, 1.5, 1.2))])
def test_spacing_per_output_axis_goes_to_its_ras_axis(orientation: str, expected: tuple[float, ...]) -> None:
    spacing, shape = ras_spacing_and_shape(orientation, (1.0, 1.5, 1.2), (10, 20, 30))
    assert tuple(spacing) == expected
    by_spacing = {1.0: 10, 1.5: 20, 1.2: 30}
    assert tuple(shape) == tuple(by_spacing[s] for s in expected)
    assert ras_spacing_and_shape(orientation, (1.0, 1.5, 1.2), None)[1] is None
