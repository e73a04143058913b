"""Vertebra centroid JSON (docs/design.md, 'Centroid JSON'): reference format, RAS mm, body centroids and border
flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.image_io import load_mask, voxel_to_world
from data.phantoms.case import generate_case, write_case
from data.phantoms.spec import CaseSpec
from straighten.centroids import case_centroids
from straighten.location_json_local import main as location_main
from tests.straighten.test_straighten_real import link_raw_root


def test_reference_format_and_flags_on_upstream_mask(real_data_dir, tmp_path):
    root = link_raw_root(real_data_dir, tmp_path, {"0007": ["upstream-0007/0007_msk.nii.gz"]})
    assert location_main(["--root", str(root), "--quiet"]) == 0
    records = json.loads((root / "raw" / "0007" / "0007.json").read_text(encoding="utf-8"))
    reference = json.loads((real_data_dir / "upstream-0007" / "0007.json").read_text(encoding="utf-8"))
    by_label = {r["label"]: r for r in records}
    assert [r["label"] for r in records] == sorted(by_label) == list(range(16, 25))
    for entry in reference:  # the reference's whole-vertebra centroids, in voxel indices
        ours = by_label[entry["label"]]
        assert [ours["X"], ours["Y"], ours["Z"]] == pytest.approx([entry["X"], entry["Y"], entry["Z"]], abs=1e-6)
    affine = load_mask(real_data_dir / "upstream-0007" / "0007_msk.nii.gz").affine
    for record in records:
        expected = voxel_to_world(affine, np.array([[record["X"], record["Y"], record["Z"]]]))[0]
        assert record["world"] == pytest.approx(expected.tolist(), abs=1e-3)
    assert by_label[16]["status"] == "too_small"          # a 66-voxel sliver: listed, not dropped
    assert by_label[17]["cut_by_border"] is True          # cut by the top of the volume
    assert all(by_label[label]["status"] == "ok" for label in range(18, 25))
    # body centroids lie in front of the whole-vertebra centroids (posterior elements pull those back)
    for label in range(18, 25):
        assert by_label[label]["body_world"][1] > by_label[label]["world"][1] + 5.0


def test_body_centroids_match_phantom_truth_and_cut_vertebrae_flagged(tmp_path):
    (tmp_path / "raw").mkdir()
    labels = (19, 20, 21, 22, 23)
    full = generate_case(CaseSpec(case="full", seed=8, labels=labels, orientation="LPS", spacing_mm=(1.2, 1.2, 2.0)))
    write_case(full, tmp_path)
    records, _ = case_centroids(tmp_path / "raw" / "full" / "full_msk.nii.gz")
    for truth, record in zip(full.truth["vertebrae"], records):
        assert record["label"] == truth["label"] and record["status"] == "ok"
        assert record["body_world"] == pytest.approx(truth["centroid_ras_mm"], abs=1.0)
        assert record["body_voxel"] == pytest.approx(truth["centroid_voxel"], abs=1.0)

    z_voxels = full.ct.shape[2]
    cut = generate_case(CaseSpec(case="cut", seed=8, labels=labels, orientation="LPS", spacing_mm=(1.2, 1.2, 2.0),
                                 shape=(full.ct.shape[0], full.ct.shape[1], z_voxels - 44)))
    write_case(cut, tmp_path)
    assert location_main(["--root", str(tmp_path), "--cases", "cut", "--quiet"]) == 0
    records = json.loads((tmp_path / "raw" / "cut" / "cut.json").read_text(encoding="utf-8"))
    flagged = {r["label"] for r in records if r["cut_by_border"]}
    assert flagged == {19, 23}  # 88 mm of slices removed around the spine cut the first and last vertebra
    assert all(r["status"] == "ok" for r in records if r["label"] in (20, 21, 22))


def test_case_without_mask_fails_the_run(tmp_path):
    (tmp_path / "raw" / "empty").mkdir(parents=True)
    assert location_main(["--root", str(tmp_path), "--quiet"]) == 1
