"""Straightening real VerSe'19 scans and the upstream 0007 mask (skipped when ../shared/data/real is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.crops import list_crop_keys, load_crop
from data.image_io import load_mask
from straighten.pipeline import straighten_root
from tests.straighten.test_straighten_phantom import body_depth_mm, mostly_inside_bodies, regional_heights_mm

REAL_CASES = {
    "sub-verse005": ["verse19/sub-verse005_ct.nii.gz", "verse19/sub-verse005_seg-vert_msk.nii.gz"],
    "sub-verse006": ["verse19/sub-verse006_ct.nii.gz", "verse19/sub-verse006_seg-vert_msk.nii.gz"],
    "0007": ["upstream-0007/0007_msk.nii.gz"],
}


def link_raw_root(real_data_dir: Path, root: Path, cases: dict[str, list[str]]) -> Path:
    """Build ``<root>/raw/<case>/`` with symbolic links to the real files (never copies)."""
    for case, files in cases.items():
        folder = root / "raw" / case
        folder.mkdir(parents=True)
        for name in files:
            (folder / Path(name).name).symlink_to(real_data_dir / name)
    return root


@pytest.fixture(scope="module")
def real_straightened(real_data_dir, tmp_path_factory):
    """The real cases straightened with the default 256 x 256 x 64 crops at 1 mm."""
    root = link_raw_root(real_data_dir, tmp_path_factory.mktemp("real"), REAL_CASES)
    results = {r.case: r for r in straighten_root(root, workers=1)}
    return root / "straightened", results


def test_one_valid_crop_per_complete_vertebra(real_straightened):
    dataroot, results = real_straightened
    assert all(not r.failed for r in results.values()), {c: r.error for c, r in results.items()}
    keys = list_crop_keys(dataroot)
    expected = {"sub-verse005": [20, 21, 22, 23, 24], "sub-verse006": [23, 24]}
    for case, labels in expected.items():
        assert sorted(int(k.rpartition("_")[2]) for k in keys if k.startswith(case + "_")) == labels
        assert not results[case].skipped
        for label in labels:
            crop = load_crop(dataroot, f"{case}_{label}")
            assert crop.label_map.shape == (256, 256, 64) and crop.ct_hu is not None
            assert 25.0 <= body_depth_mm(crop.label_map, label, 1.0) <= 45.0, (case, label)
            target = np.argwhere(crop.label_map == label).mean(axis=0)
            assert np.all(np.abs(target - [128, 128, 32]) <= 1.0), (case, label)
            columns = np.array([np.argwhere(crop.label_map == lab).mean(axis=0)[1:]
                                for lab in mostly_inside_bodies(crop.label_map, label)])
            assert np.all(np.abs(columns - columns.mean(axis=0)) <= 2.0), (case, label)
            # the CT crop holds (osteoporotic) bone where the body label is, soft tissue around it
            body_hu = np.median(crop.ct_hu[crop.label_map == label])
            assert body_hu > 50.0 and body_hu > np.median(crop.ct_hu[(crop.label_map == 0) & (crop.ct_hu > -900)]) + 30


def test_upstream_mask_only_case_matches_reference_heights(real_straightened, real_data_dir):
    dataroot, results = real_straightened
    result = results["0007"]
    assert set(result.skipped) == {"0007_16", "0007_17"}  # the 66-voxel sliver and the vertebra cut at the top
    assert any("mask only" in note for note in result.notes)
    assert not list((dataroot / "CT").glob("0007_*"))
    reference_dir = real_data_dir / "upstream-0007" / "straightened" / "label"
    for label in range(18, 24):
        crop = load_crop(dataroot, f"0007_{label}", need_ct=False)
        assert crop.sidecar["has_ct"] is False
        reference = load_mask(reference_dir / f"0007_{label}.nii.gz").array
        ours = regional_heights_mm(crop.label_map, label, 1.0)
        theirs = regional_heights_mm(reference, label, 1.0)
        for region in ours:
            assert ours[region] == pytest.approx(theirs[region], abs=2.0), (label, region)
