"""Crop -> scan mapping (straighten.frames.world_to_crop_voxel, straighten.backproject) on an oblique phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.crops import crop_paths, load_crop
from data.image_io import find_case_files, load_mask, voxel_to_world, world_to_voxel
from straighten.backproject import sample_crop, scan_footprint
from straighten.frames import crop_voxel_to_world, world_to_crop_voxel
from straighten.pipeline import straighten_case
from straighten.spine import body_label_map, build_spine_model
from tests.phantom_fixtures import make_test_phantom
from util.fileio import read_json

CROP_SIZE = (96, 96, 48)


@pytest.fixture(scope="module")
def straightened_oblique(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An oblique (PIL), anisotropic (0.8 x 1.6 x 1.1 mm) phantom with a curved spine, straightened into 1 mm crops."""
    root = tmp_path_factory.mktemp("oblique")
    make_test_phantom(root, case="obl", labels=(19, 20, 21, 22), fractures={20: ("wedge", 0.35)},
                      orientation="PIL", spacing_mm=(0.8, 1.6, 1.1), seed=3)
    case = find_case_files(root / "raw" / "obl")
    result = straighten_case(case, root / "straightened", CROP_SIZE, 1.0)
    assert not result.failed and "obl_20" in result.written
    return root, root / "straightened"


def test_crop_scan_crop_round_trip_in_mm(straightened_oblique: tuple[Path, Path]) -> None:
    _, dataroot = straightened_oblique
    sidecar = read_json(crop_paths(dataroot, "obl_20").sidecar)
    rng = np.random.default_rng(0)
    ijk = rng.uniform(0, np.array(CROP_SIZE) - 1, size=(4000, 3))
    world = crop_voxel_to_world(sidecar, ijk)
    back = world_to_crop_voxel(sidecar, world)
    # crop voxels are 1 mm: index error = mm error; the whole crop spans the blend zones between bodies
    assert np.abs(back - ijk).max() < 1e-3
    # and the other way round: scan mm -> crop -> scan mm
    again = crop_voxel_to_world(sidecar, back)
    assert np.linalg.norm(again - world, axis=1).max() < 1e-3


def test_body_label_crop_maps_back_onto_the_scan_bodies(straightened_oblique: tuple[Path, Path]) -> None:
    root, dataroot = straightened_oblique
    mask = load_mask(root / "raw" / "obl" / "obl_msk.nii.gz")
    bodies = body_label_map(build_spine_model(mask))
    crop = load_crop(dataroot, "obl_21", need_ct=False)
    target = (crop.label_map == 21)
    index = np.argwhere(target)
    footprint = scan_footprint(crop.sidecar, mask.array.shape, mask.affine, (index.min(0) - 2, index.max(0) + 2))
    mapped = sample_crop(target.astype(np.float32), footprint, order=0) > 0.5
    truth = bodies[footprint.box] == 21
    dice = 2 * np.count_nonzero(mapped & truth) / (np.count_nonzero(mapped) + np.count_nonzero(truth))
    # nearest-neighbour resampling twice (scan 0.8-1.6 mm -> crop 1 mm -> scan) costs about a voxel on the surface
    assert dice > 0.9
    # the centroid lands where it was, within a scan voxel
    centroid_mapped = voxel_to_world(mask.affine, np.argwhere(mapped).mean(0)[None] + [s.start for s in footprint.box])
    centroid_truth = voxel_to_world(mask.affine, np.argwhere(truth).mean(0)[None] + [s.start for s in footprint.box])
    assert np.linalg.norm(centroid_mapped - centroid_truth) < 0.5
    assert world_to_voxel(mask.affine, centroid_truth).shape == (1, 3)
