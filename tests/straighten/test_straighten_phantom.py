"""Straightening on phantoms with known truth (docs/design.md, 'Straightened crops' and 'Phantom truth'): heights,
centring, verticality, de-pedicle, HU, orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.crops import list_crop_keys, load_crop
from data.image_io import load_ct, voxel_to_world, world_to_voxel
from data.phantoms.case import generate_case, write_case
from data.phantoms.spec import CaseSpec, Fracture
from evaluation.genant import ANATOMICAL_REGIONS
from straighten.frames import crop_voxel_to_world
from straighten.pipeline import straighten_root
from straighten.straighten_mask_3d import main as straighten_main

LABELS = (20, 21, 22, 23)
FRACTURES = {21: Fracture("wedge", 0.33), 22: Fracture("biconcave", 0.3)}
CROP_1MM = (96, 96, 64)  # 64 mm wide: the whole body (up to ~52 mm) fits laterally


def make_phantom_root(root: Path, case: str, orientation: str, spacing_mm: tuple[float, float, float],
                      seed: int = 11) -> dict:
    """Write one phantom case under ``root/raw/<case>/``; return its truth."""
    (root / "raw").mkdir(parents=True, exist_ok=True)
    phantom = generate_case(CaseSpec(case=case, seed=seed, labels=LABELS, fractures=FRACTURES,
                                     orientation=orientation, spacing_mm=spacing_mm, noise_hu=10.0, margin_mm=8.0))
    write_case(phantom, root)
    return phantom.truth


def body_profile(label_crop: np.ndarray, label: int) -> tuple[int, float, float]:
    """Mid-sagittal slice index and the body's anterior/posterior wall columns (medians over its central rows)."""
    body = label_crop == label
    slice_index = int(round(np.argwhere(body)[:, 2].mean()))
    section = body[:, :, slice_index]
    rows = np.flatnonzero(section.any(axis=1))
    central = rows[len(rows) // 4: len(rows) - len(rows) // 4]
    anterior = float(np.median([np.flatnonzero(section[r])[0] for r in central]))
    posterior = float(np.median([np.flatnonzero(section[r])[-1] for r in central]))
    return slice_index, anterior, posterior


def body_depth_mm(label_crop: np.ndarray, label: int, spacing_mm: float) -> float:
    """A->P depth of a body (mm): wall-to-wall extent on its mid-sagittal slice, central rows."""
    _, anterior, posterior = body_profile(label_crop, label)
    return (posterior - anterior + 1.0) * spacing_mm


def regional_heights_mm(label_crop: np.ndarray, label: int, spacing_mm: float) -> dict[str, float]:
    """Body heights as voxel counts along axis 0 at the centres of the A->P thirds (the phantom's definition).

    Each height is the mean count over the 3 x 3 columns around the third's centre on the
    mid-sagittal slice, which averages out the voxel quantisation of the two endplates.
    """
    slice_index, anterior, posterior = body_profile(label_crop, label)
    depth = posterior - anterior + 1.0
    centres = {"anterior": anterior - 0.5 + depth / 6, "middle": anterior - 0.5 + depth / 2,
               "posterior": posterior + 0.5 - depth / 6}
    body = label_crop == label
    heights = {}
    for region, column in centres.items():
        j = int(round(column))
        block = body[:, j - 1:j + 2, slice_index - 1:slice_index + 2]
        heights[region] = float(block.sum(axis=0).mean()) * spacing_mm
    return heights


def mostly_inside_bodies(label_crop: np.ndarray, target: int) -> list[int]:
    """Labels with at least half as many voxels in the crop as the target body (crops may cut neighbours)."""
    labels, counts = np.unique(label_crop[label_crop > 0], return_counts=True)
    target_count = counts[labels == target][0]
    return [int(lab) for lab, n in zip(labels, counts) if n >= 0.5 * target_count]


def core_mean_hu(hu: np.ndarray, world: np.ndarray, vertebra: dict) -> float:
    """Mean HU of the points inside the cancellous core: the central half of the body in the phantom's frame."""
    frame = vertebra["frame"]
    rotation = np.array([frame["superior"], frame["anterior"], frame["left"]])
    local = (world - np.array(frame["origin_ras_mm"])) @ rotation.T
    half = np.array([min(vertebra["height_post_mm"].values()) / 4, vertebra["body_depth_mm"] / 4,
                     vertebra["body_width_mm"] / 4])
    inside = np.all(np.abs(local) <= half, axis=1)
    assert inside.sum() > 50
    return float(hu[inside].mean())


@pytest.fixture(scope="module")
def phantom_1mm(tmp_path_factory) -> tuple[Path, dict]:
    """A 4-vertebra phantom (two fractures) at 1 mm, straightened into 96 x 96 x 32 crops."""
    root = tmp_path_factory.mktemp("phantom_1mm")
    truth = make_phantom_root(root, "ph1mm", "RAS", (1.0, 1.0, 1.0))
    results = straighten_root(root, crop_size=CROP_1MM, spacing_mm=1.0)
    assert not results[0].failed, results[0].error
    return root / "straightened", truth


def test_one_crop_per_vertebra_with_contract_geometry(phantom_1mm):
    dataroot, truth = phantom_1mm
    assert list_crop_keys(dataroot) == sorted(f"ph1mm_{lab}" for lab in LABELS)
    for vertebra in truth["vertebrae"]:
        crop = load_crop(dataroot, f"ph1mm_{vertebra['label']}")
        assert crop.label_map.shape == CROP_1MM and crop.ct_hu.shape == CROP_1MM
        assert np.allclose(crop.spacing_mm, 1.0)
        assert crop.sidecar["axes"] == "IPL" and crop.sidecar["has_ct"] is True
        assert crop.sidecar["centre_voxel"] == [48, 48, 32]


def test_heights_equal_truth_within_1mm(phantom_1mm):
    dataroot, truth = phantom_1mm
    for vertebra in truth["vertebrae"]:
        crop = load_crop(dataroot, f"ph1mm_{vertebra['label']}", need_ct=False)
        heights = regional_heights_mm(crop.label_map, vertebra["label"], 1.0)
        for region in ANATOMICAL_REGIONS:
            assert heights[region] == pytest.approx(vertebra["height_post_mm"][region], abs=1.0), (
                vertebra["name"], region)


def test_target_centred_and_bodies_vertical(phantom_1mm):
    dataroot, truth = phantom_1mm
    for vertebra in truth["vertebrae"]:
        crop = load_crop(dataroot, f"ph1mm_{vertebra['label']}", need_ct=False)
        target = np.argwhere(crop.label_map == vertebra["label"]).mean(axis=0)
        assert np.all(np.abs(target - np.array(crop.sidecar["centre_voxel"])) <= 1.0), vertebra["name"]
        columns = np.array([np.argwhere(crop.label_map == lab).mean(axis=0)[1:]
                            for lab in mostly_inside_bodies(crop.label_map, vertebra["label"])])
        assert len(columns) >= 2
        assert np.all(np.abs(columns - columns.mean(axis=0)) <= 2.0), vertebra["name"]


def test_posterior_elements_removed(phantom_1mm):
    dataroot, truth = phantom_1mm
    for vertebra in truth["vertebrae"]:
        crop = load_crop(dataroot, f"ph1mm_{vertebra['label']}", need_ct=False)
        depth = body_depth_mm(crop.label_map, vertebra["label"], 1.0)
        assert depth == pytest.approx(vertebra["body_depth_mm"], abs=2.0), vertebra["name"]
        # nothing of the target label behind its posterior wall (pedicles, lamina, spinous process)
        _, _, posterior = body_profile(crop.label_map, vertebra["label"])
        behind = np.argwhere(crop.label_map == vertebra["label"])[:, 1] > posterior + 3
        assert not behind.any(), vertebra["name"]


def test_core_hu_and_mapping_back_to_the_scan(phantom_1mm):
    dataroot, truth = phantom_1mm
    raw = dataroot.parent / "raw" / "ph1mm"
    source = load_ct(raw / "ph1mm.nii.gz")
    for vertebra in truth["vertebrae"]:
        crop = load_crop(dataroot, f"ph1mm_{vertebra['label']}")
        centre = np.array(crop.sidecar["centre_voxel"])
        ijk = np.argwhere(np.ones((31, 41, 31), dtype=bool)) + centre - [15, 20, 15]
        crop_mean = core_mean_hu(crop.ct_hu[tuple(ijk.T)], crop_voxel_to_world(crop.sidecar, ijk), vertebra)
        origin = world_to_voxel(source.affine, np.array([vertebra["frame"]["origin_ras_mm"]]))[0]
        near = np.argwhere(np.ones((61, 61, 61), dtype=bool)) + np.rint(origin).astype(int) - 30
        near = near[np.all((near >= 0) & (near < source.array.shape), axis=1)]
        raw_mean = core_mean_hu(source.array[tuple(near.T)], voxel_to_world(source.affine, near), vertebra)
        assert crop_mean == pytest.approx(raw_mean, rel=0.05), vertebra["name"]
        # the crop centre maps back onto the body centroid of the truth
        assert np.allclose(crop_voxel_to_world(crop.sidecar, centre[None])[0], vertebra["centroid_ras_mm"], atol=1.0)


@pytest.fixture(scope="module")
def phantom_orientations(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The same anisotropic phantom written in RAS, LPS and PIR (spacing 0.8, 0.8, 2.0 mm per R, A, S), straightened
    at 2 mm."""
    root = tmp_path_factory.mktemp("phantom_orient")
    spacing = {"RAS": (0.8, 0.8, 2.0), "LPS": (0.8, 0.8, 2.0), "PIR": (0.8, 2.0, 0.8)}
    truths = {o: make_phantom_root(root, f"ph{o.lower()}", o, spacing[o], seed=5) for o in spacing}
    assert straighten_main(["--root", str(root), "--crop_size", "64", "64", "32", "--spacing", "2.0",
                            "--workers", "2", "--quiet"]) == 0
    return root / "straightened", truths


def test_same_result_in_every_orientation(phantom_orientations):
    dataroot, truths = phantom_orientations
    for label in LABELS:
        crops = {o: load_crop(dataroot, f"ph{o.lower()}_{label}") for o in truths}
        reference = crops["RAS"]
        reference_body = reference.label_map == label
        reference_heights = regional_heights_mm(reference.label_map, label, 2.0)
        for orientation in ("LPS", "PIR"):
            other = crops[orientation]
            body = other.label_map == label
            dice = 2.0 * (body & reference_body).sum() / (body.sum() + reference_body.sum())
            assert dice > 0.97, (orientation, label)
            heights = regional_heights_mm(other.label_map, label, 2.0)
            for region in ANATOMICAL_REGIONS:
                assert heights[region] == pytest.approx(reference_heights[region], abs=1.0), (
                    orientation, label, region)
            centroid_shift = np.argwhere(body).mean(axis=0) - np.argwhere(reference_body).mean(axis=0)
            assert np.all(np.abs(centroid_shift) < 0.25), (orientation, label)
            assert other.ct_hu[reference_body].mean() == pytest.approx(reference.ct_hu[reference_body].mean(), rel=0.02)
        for vertebra in truths["PIR"]["vertebrae"]:
            if vertebra["label"] != label:
                continue
            heights = regional_heights_mm(crops["PIR"].label_map, label, 2.0)
            tolerance = max(2.0, vertebra["height_resolution_mm"])  # 2 mm crop voxels, 2 mm slices
            for region in ANATOMICAL_REGIONS:
                assert heights[region] == pytest.approx(vertebra["height_post_mm"][region], abs=tolerance), (
                    label, region)
            target = np.argwhere(crops["PIR"].label_map == label).mean(axis=0)
            assert np.all(np.abs(target - np.array(crops["PIR"].sidecar["centre_voxel"])) <= 1.0)


def test_mask_only_case_and_bad_cases(tmp_path):
    root = tmp_path
    make_phantom_root(root, "good", "RAS", (1.5, 1.5, 1.5), seed=2)
    make_phantom_root(root, "maskonly", "LPS", (1.5, 1.5, 1.5), seed=3)
    (root / "raw" / "maskonly" / "maskonly.nii.gz").unlink()
    make_phantom_root(root, "nomask", "RAS", (1.5, 1.5, 1.5), seed=4)
    (root / "raw" / "nomask" / "nomask_msk.nii.gz").unlink()
    make_phantom_root(root, "mismatch", "RAS", (1.5, 1.5, 1.5), seed=6)
    other = generate_case(CaseSpec(case="x", seed=7, labels=LABELS, spacing_mm=(1.5, 1.5, 1.5), orientation="RAS"))
    from data.image_io import save_nifti
    save_nifti(other.ct, other.affine, root / "raw" / "mismatch" / "mismatch.nii.gz", dtype=np.int16)

    out = root / "out"
    status = straighten_main(["--root", str(root), "--out", str(out), "--crop_size", "48", "48", "16",
                              "--spacing", "2.0", "--quiet"])
    assert status == 1
    keys = list_crop_keys(out)
    assert {k.rpartition("_")[0] for k in keys} == {"good", "maskonly"}
    assert not list(out.rglob("mismatch_*")) and not list(out.rglob("nomask_*"))
    mask_only = load_crop(out, keys[[k.startswith("maskonly") for k in keys].index(True)], need_ct=False)
    assert mask_only.sidecar["has_ct"] is False and mask_only.sidecar["source_ct"] is None
    assert not list((out / "CT").glob("maskonly_*"))
    assert not list(out.rglob(".*"))  # no temporary files left behind
