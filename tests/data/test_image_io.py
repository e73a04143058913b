"""The I/O module: loading, validation, orientation, windowing and atomic writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.image_io import (
    ImageIOError,
    Volume,
    axis_codes,
    find_case_files,
    list_cases,
    load_ct,
    load_ct_and_mask,
    load_mask,
    reorient,
    save_nifti,
    unwindow,
    voxel_spacing,
    voxel_to_world,
    window_hu,
    world_to_voxel,
)
from util.fileio import atomic_write, read_json, write_json


def _oriented_affine(codes: str, spacing: tuple[float, float, float], origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """Affine whose array axes point along ``codes`` with the given spacing (mm)."""
    unit = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
    affine = np.eye(4)
    for axis, (code, step) in enumerate(zip(codes, spacing)):
        affine[:3, axis] = np.asarray(unit[code], dtype=float) * step
    affine[:3, 3] = origin
    return affine


@pytest.fixture()
def ct_and_mask(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 300, size=(12, 10, 8)).astype(np.float32)
    mask = np.zeros((12, 10, 8), dtype=np.uint8)
    mask[2:5, 3:7, 2:6] = 20
    mask[6:9, 3:7, 2:6] = 21
    affine = _oriented_affine("PIR", (0.8, 2.0, 0.7))
    ct_path = save_nifti(ct, affine, tmp_path / "case" / "case.nii.gz")
    mask_path = save_nifti(mask, affine, tmp_path / "case" / "case_msk.nii.gz")
    return ct_path, mask_path, ct, mask


def test_load_ct_and_mask_round_trip(ct_and_mask):
    ct_path, mask_path, ct, mask = ct_and_mask
    ct_volume, mask_volume = load_ct_and_mask(ct_path, mask_path)
    assert ct_volume.array.dtype == np.float32
    assert mask_volume.array.dtype == np.int16
    np.testing.assert_array_equal(ct_volume.array, ct)
    np.testing.assert_array_equal(mask_volume.array, mask)
    assert ct_volume.orientation == "PIR"
    np.testing.assert_allclose(ct_volume.spacing_mm, [0.8, 2.0, 0.7], atol=1e-6)


def test_missing_file_names_the_file(tmp_path: Path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(ImageIOError, match="nope.nii.gz.*not found"):
        load_ct(missing)


def test_truncated_gzip_is_a_clear_error(ct_and_mask, tmp_path: Path):
    ct_path = ct_and_mask[0]
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(ct_path.read_bytes()[: ct_path.stat().st_size // 2])
    with pytest.raises(ImageIOError, match="truncated.nii.gz"):
        load_ct(truncated)


def test_garbage_file_is_a_clear_error(tmp_path: Path):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(ImageIOError, match="corrupt.nii.gz"):
        load_mask(corrupt)


def test_shape_mismatch_names_both_files(ct_and_mask, tmp_path: Path):
    ct_path, _, _, mask = ct_and_mask
    other = save_nifti(mask[:-1], nib.load(str(ct_path)).affine, tmp_path / "other_msk.nii.gz")
    with pytest.raises(ImageIOError, match=r"case\.nii\.gz and .*other_msk\.nii\.gz.*shapes differ"):
        load_ct_and_mask(ct_path, other)


def test_affine_mismatch_names_both_files(ct_and_mask, tmp_path: Path):
    ct_path, _, _, mask = ct_and_mask
    shifted = nib.load(str(ct_path)).affine.copy()
    shifted[0, 3] += 0.5
    other = save_nifti(mask, shifted, tmp_path / "shifted_msk.nii.gz")
    with pytest.raises(ImageIOError, match=r"shifted_msk\.nii\.gz: affines differ"):
        load_ct_and_mask(ct_path, other)


def test_affine_within_tolerance_is_accepted(ct_and_mask, tmp_path: Path):
    ct_path, _, _, mask = ct_and_mask
    nudged = nib.load(str(ct_path)).affine.copy()
    nudged[0, 3] += 1e-4
    other = save_nifti(mask, nudged, tmp_path / "nudged_msk.nii.gz")
    load_ct_and_mask(ct_path, other)


def test_nan_in_ct_is_rejected(tmp_path: Path):
    ct = np.zeros((4, 4, 4), dtype=np.float32)
    ct[1, 2, 3] = np.nan
    path = save_nifti(ct, np.eye(4), tmp_path / "nan.nii.gz")
    with pytest.raises(ImageIOError, match="nan.nii.gz.*1 NaN"):
        load_ct(path)


def test_non_integer_mask_is_rejected(tmp_path: Path):
    path = save_nifti(np.full((3, 3, 3), 20.5, dtype=np.float32), np.eye(4), tmp_path / "frac_msk.nii.gz")
    with pytest.raises(ImageIOError, match="frac_msk.nii.gz.*non-integer"):
        load_mask(path)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "IPL", "ASL"])
def test_reorient_preserves_world_positions(codes: str):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 100, size=(5, 6, 7)).astype(np.int16)
    volume = Volume(array, _oriented_affine("LPS", (0.7, 0.9, 2.5)))
    target = reorient(volume, codes)
    assert target.orientation == codes
    # the voxel holding the maximum sits at the same world position in both arrays
    marker = np.unravel_index(np.argmax(array), array.shape)
    world = voxel_to_world(volume.affine, np.array([marker]))
    moved = np.rint(world_to_voxel(target.affine, world)).astype(int)[0]
    assert target.array[tuple(moved)] == array[marker]
    assert np.isclose(np.prod(voxel_spacing(target.affine)), 0.7 * 0.9 * 2.5)
    np.testing.assert_array_equal(np.sort(target.array.ravel()), np.sort(array.ravel()))


def test_axis_codes_of_oblique_free_affines():
    assert axis_codes(_oriented_affine("PIR", (1, 1, 1))) == "PIR"
    assert axis_codes(np.diag([-1.0, -1.0, 1.0, 1.0])) == "LPS"


def test_voxel_world_round_trip():
    affine = _oriented_affine("IPL", (1.0, 0.8, 2.0))
    ijk = np.array([[0, 0, 0], [3.5, 2, 1], [10, 20, 30]], dtype=float)
    np.testing.assert_allclose(world_to_voxel(affine, voxel_to_world(affine, ijk)), ijk, atol=1e-9)


def test_window_hu_maps_window_to_unit_range_and_clips():
    hu = np.array([-1000, -300, 250, 800, 3000], dtype=np.float32)
    windowed = window_hu(hu)
    np.testing.assert_allclose(windowed, [-1, -1, 0, 1, 1], atol=1e-6)
    assert windowed.dtype == np.float32
    inside = np.array([-300, 0, 512.5, 800], dtype=np.float32)
    np.testing.assert_allclose(unwindow(window_hu(inside)), inside, atol=1e-3)
    with pytest.raises(ValueError):
        window_hu(hu, (100, 100))


def test_save_nifti_is_atomic_on_failure(tmp_path: Path, monkeypatch):
    target = tmp_path / "out.nii.gz"
    save_nifti(np.ones((2, 2, 2), np.float32), np.eye(4), target)
    before = target.read_bytes()

    def broken_save(image, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(np.zeros((2, 2, 2), np.float32), np.eye(4), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path):
    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_write(target, encoding="utf-8") as handle:
            handle.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_find_case_files_accepts_both_naming_schemes(tmp_path: Path):
    plain = tmp_path / "raw" / "ph000"
    save_nifti(np.zeros((2, 2, 2)), np.eye(4), plain / "ph000.nii.gz")
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), plain / "ph000_msk.nii.gz")
    verse = tmp_path / "raw" / "sub-verse005"
    save_nifti(np.zeros((2, 2, 2)), np.eye(4), verse / "sub-verse005_ct.nii.gz")
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), verse / "sub-verse005_seg-vert_msk.nii.gz")
    mask_only = tmp_path / "raw" / "0007"
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), mask_only / "0007_msk.nii.gz")
    cases = {c.case: c for c in list_cases(tmp_path)}
    assert cases["ph000"].ct.name == "ph000.nii.gz" and cases["ph000"].mask.name == "ph000_msk.nii.gz"
    assert cases["sub-verse005"].ct.name == "sub-verse005_ct.nii.gz"
    assert cases["sub-verse005"].mask.name == "sub-verse005_seg-vert_msk.nii.gz"
    assert cases["0007"].ct is None and cases["0007"].centroids.name == "0007.json"
    with pytest.raises(ImageIOError, match="not found"):
        find_case_files(tmp_path / "raw" / "missing")


def test_dicom_series_matches_nifti_geometry(tmp_path: Path):
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(2)
    hu = rng.integers(-1000, 1500, size=(6, 5, 4)).astype(np.int16)  # (k, j, i) SimpleITK order
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.0, 5.0))
    series = tmp_path / "case" / "dicom"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[0]):
        plane = image[:, :, k]
        plane.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        plane.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        plane.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        plane.SetMetaData("0020|0013", str(k))
        plane.SetMetaData("0028|0030", "0.8\\0.7")
        plane.SetMetaData("0018|0050", "2.5")
        writer.SetFileName(str(series / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    volume = load_ct(series)
    np.testing.assert_array_equal(volume.array, np.transpose(hu, (2, 1, 0)).astype(np.float32))
    np.testing.assert_allclose(volume.spacing_mm, [0.7, 0.8, 2.5], atol=1e-4)
    assert volume.orientation == "LPS"
    # LPS origin (-10, 20, 5) is RAS (10, -20, 5)
    np.testing.assert_allclose(volume.affine[:3, 3], [10.0, -20.0, 5.0], atol=1e-4)
    assert find_case_files(tmp_path / "case").ct == series


def test_atomic_outputs_get_umask_permissions(tmp_path: Path):
    import os

    old = os.umask(0o022)
    try:
        path = save_nifti(np.zeros((2, 2, 2), np.float32), np.eye(4), tmp_path / "perm.nii.gz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_read_grid_reads_the_header_only(ct_and_mask, tmp_path: Path):
    from data.image_io import read_grid

    ct_path, mask_path, ct, _ = ct_and_mask
    grid = read_grid(ct_path)
    assert grid.array.shape == ct.shape and grid.orientation == "PIR"
    np.testing.assert_allclose(grid.affine, nib.load(str(mask_path)).affine)
    with pytest.raises(ImageIOError, match="nope.nii.gz: file not found"):
        read_grid(tmp_path / "nope.nii.gz")
