"""Unit tests of the straightening geometry: sagittal frames, centre line, piecewise-rigid sampling grid."""

from __future__ import annotations

import numpy as np
import pytest

from straighten.frames import StraightLine, crop_voxel_to_world
from straighten.spine import StraightenError, fit_centre_line, sagittal_frames


def test_sagittal_frames_are_orthonormal_with_posterior_in_the_sagittal_plane():
    tangents = np.array([[0.0, 0.0, -1.0], [0.1, 0.3, -0.95], [-0.2, -0.4, -0.9]])
    tangent, posterior, left = sagittal_frames(tangents)
    assert np.allclose(posterior[:, 0], 0.0) and np.all(posterior[:, 1] < 0)
    for t, p, lft in zip(tangent, posterior, left):
        assert np.allclose(np.stack([t, p, lft]) @ np.stack([t, p, lft]).T, np.eye(3), atol=1e-12)
    assert np.allclose(left[0], [-1.0, 0.0, 0.0])  # vertical spine: axes I, P, L
    with pytest.raises(StraightenError):
        sagittal_frames(np.array([[1.0, 0.0, 0.0]]))


def test_centre_line_arc_lengths_and_tangents():
    points = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -30.0], [0.0, 0.0, -62.0], [0.0, 0.0, -90.0]])
    line = fit_centre_line(points)
    assert line.arc_mm == pytest.approx([0.0, 30.0, 62.0, 90.0], abs=1e-6)
    assert np.allclose(line.tangents, [0.0, 0.0, -1.0])
    bent = fit_centre_line(np.array([[0.0, 0.0, 0.0], [0.0, 5.0, -30.0], [0.0, 0.0, -60.0]]))
    assert bent.arc_mm[1] > np.hypot(5.0, 30.0) - 1e-6  # arc is at least the chord
    with pytest.raises(StraightenError):
        fit_centre_line(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -0.5]]))


def test_piecewise_rigid_line_keeps_bodies_rigid_and_blends_discs():
    tangent_a = np.array([0.0, 0.0, -1.0])
    tangent_b = np.array([0.0, np.sin(0.2), -np.cos(0.2)])
    line = StraightLine(labels=[20, 21], arc_mm=np.array([0.0, 40.0]),
                        centroids_ras=np.array([[0.0, 0.0, 0.0], [0.0, 4.0, -40.0]]),
                        tangents=np.stack([tangent_a, tangent_b]),
                        zone_start_mm=np.array([-15.0, 25.0]), zone_end_mm=np.array([15.0, 55.0]))
    s = np.array([-30.0, -10.0, 0.0, 12.0, 20.0, 30.0, 40.0, 70.0])
    origins, tangents, _, _ = line.frames_at(s)
    assert np.allclose(origins[:4], np.outer(s[:4], tangent_a))              # rigid in body A and above it
    assert np.allclose(origins[5:], [0.0, 4.0, -40.0] + np.outer(s[5:] - 40.0, tangent_b))  # rigid in body B and below
    assert np.allclose(tangents[:4], tangent_a) and np.allclose(tangents[5:], tangent_b)
    assert 0.0 < tangents[4] @ tangent_a < 1.0 and 0.0 < tangents[4] @ tangent_b < 1.0  # disc: in between
    sidecar = {"centreline": line.to_json(), "centre_voxel": [10, 8, 4],
               "sampling": {"spacing_mm": 1.0, "crop_row0_arc_mm": 30.0}}
    # crop voxel (10, 8 + 3, 4): 3 mm behind body B's centroid
    world = crop_voxel_to_world(sidecar, np.array([[10, 11, 4]]))[0]
    _, posterior, _ = sagittal_frames(tangent_b[None])
    assert np.allclose(world, np.array([0.0, 4.0, -40.0]) + 3.0 * posterior[0], atol=1e-3)
