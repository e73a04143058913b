"""Importing crops of the published straightening (grey float64 CT, float labels, heatmaps) into our crop contract."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.crops import load_crop
from data.image_io import load_ct, window_hu
from straighten import import_reference_crops
from tests.paths import REFERENCE_DIR

MASKING_DIR = REFERENCE_DIR / "masking"
SHAPE = (24, 20, 8)
RAS_AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])  # an original scan's affine, as the published files keep it


def published_grey(hu: np.ndarray) -> np.ndarray:
    """The published window: 255 (HU + 300) / 1100, clipped to 0..255, float64."""
    return np.clip(255.0 * (hu + 300.0) / 1100.0, 0.0, 255.0)


def write_published(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float64), RAS_AFFINE), str(path))


def tiny_published_crop(src: Path, key: str = "p01_20", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1000.0, 1500.0, SHAPE)
    labels = np.zeros(SHAPE)
    labels[8:16, 5:15, 2:6] = 20
    labels[0:6, 5:15, 2:6] = 19
    cam = rng.integers(0, 257, SHAPE) / 256.0
    write_published(src / "CT" / f"{key}.nii.gz", published_grey(hu))
    write_published(src / "label" / f"{key}.nii.gz", labels)
    write_published(src / "heatmap" / f"{key}_1.nii.gz", cam)
    return hu, labels, cam


def test_tiny_crop_round_trips_hu_within_the_grey_quantisation(tmp_path: Path) -> None:
    src, out = tmp_path / "published", tmp_path / "data" / "straightened"
    hu, labels, cam = tiny_published_crop(src)
    assert import_reference_crops.main(["--src", str(src), "--out", str(out)]) == 0
    crop = load_crop(out, "p01_20")
    assert nib.load(str(out / "CT" / "p01_20.nii.gz")).get_data_dtype() == np.int16
    assert nib.load(str(out / "label" / "p01_20.nii.gz")).get_data_dtype() == np.uint8
    inside = (hu > -300) & (hu < 800)
    assert np.abs(crop.ct_hu[inside] - hu[inside]).max() <= 0.5  # continuous grey: only the int16 rounding
    assert np.all(crop.ct_hu[hu <= -300] == -300) and np.all(crop.ct_hu[hu >= 800] == 800)  # the window clipped them
    assert np.array_equal(crop.label_map, labels.astype(np.uint8))  # axes kept, ids exact
    assert nib.aff2axcodes(crop.affine) == ("I", "P", "L") and np.allclose(crop.spacing_mm, 1.0)
    assert crop.sidecar["geometry"].startswith("unknown") and crop.sidecar["source_affine"] == RAS_AFFINE.tolist()
    imported_cam = load_ct(tmp_path / "data" / "heatmap" / "p01_20.nii.gz").array  # default: heatmap/ beside --out
    assert np.allclose(imported_cam, cam, atol=1e-7)


def test_integer_grey_crops_stay_within_one_grey_level(tmp_path: Path) -> None:
    src, out = tmp_path / "published", tmp_path / "straightened"
    hu, _, _ = tiny_published_crop(src)
    write_published(src / "CT" / "p01_20.nii.gz", published_grey(hu).astype(np.uint8))  # truncated grey
    assert import_reference_crops.main(["--src", str(src), "--out", str(out), "--cam_out", str(tmp_path / "cam")]) == 0
    inside = (hu > -300) & (hu < 800)
    error = load_crop(out, "p01_20").ct_hu[inside] - hu[inside]
    assert error.max() <= 0.5 and error.min() >= -(1100 / 255 + 0.5)
    assert (tmp_path / "cam" / "p01_20.nii.gz").is_file()


def test_bad_files_are_named_and_the_batch_continues(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "published", tmp_path / "straightened"
    hu, labels, _ = tiny_published_crop(src, "good_20")
    tiny_published_crop(src, "inhu_20")
    write_published(src / "CT" / "inhu_20.nii.gz", hu)  # HU, not the published grey
    write_published(src / "label" / "noct_20.nii.gz", labels)  # label without its CT
    write_published(src / "CT" / "notarget_21.nii.gz", published_grey(hu))
    write_published(src / "label" / "notarget_21.nii.gz", labels)  # label 21 absent
    assert import_reference_crops.main(["--src", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any("inhu_20" in line and "outside the published grey range" in line for line in err)
    assert any("noct_20" in line and "CT crop missing" in line for line in err)
    assert any("notarget_21" in line and "target label 21 is not in the crop" in line for line in err)
    assert sorted(p.name for p in (out / "label").glob("*.nii.gz")) == ["good_20.nii.gz"]  # nothing of the bad ones
    assert not (out / "CT" / "inhu_20.nii.gz").exists()


@pytest.fixture()
def masking_dir() -> Path:
    if not (MASKING_DIR / "CT").is_dir():
        pytest.skip(f"reference fixtures not available at {MASKING_DIR}")
    return MASKING_DIR


def test_reference_masking_crops_import_to_the_same_values(masking_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "straightened"
    assert import_reference_crops.main(["--src", str(masking_dir), "--out", str(out)]) == 0
    keys = sorted(p.name[: -len(".nii.gz")] for p in (masking_dir / "label").glob("*.nii.gz"))
    assert keys
    for key in keys:
        grey = nib.load(str(masking_dir / "CT" / f"{key}.nii.gz")).get_fdata()
        crop = load_crop(out, key)
        assert np.array_equal(crop.label_map, nib.load(str(masking_dir / "label" / f"{key}.nii.gz")).get_fdata())
        assert np.abs(crop.ct_hu - (-300 + grey * 1100 / 255)).max() <= 0.5
        # our window of the imported HU is the published normalisation (g/255 - 0.5)/0.5 up to the 0.5 HU rounding
        assert np.abs(window_hu(crop.ct_hu) - (grey / 255 - 0.5) / 0.5).max() <= 2 * 0.5 / 1100 + 1e-6
        cam = nib.load(str(masking_dir / "heatmap" / f"{key}.nii.gz")).get_fdata()
        assert np.allclose(load_ct(tmp_path / "heatmap" / f"{key}.nii.gz").array, cam, atol=1e-7)
