"""Reading, validating, reorienting and writing CT volumes and vertebra masks.

Every step of the pipeline goes through this module. Arrays keep the axis order
of the file; the 4x4 ``affine`` maps voxel indices ``(i, j, k)`` to RAS
millimetres, so orientation and spacing are always read from it, never assumed.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from data.labels import LABEL_SCHEMES, totalseg_to_verse
from util.fileio import atomic_path

AFFINE_TOLERANCE_MM = 1e-3
DEFAULT_WINDOW_HU = (-300.0, 800.0)


class ImageIOError(ValueError):
    """A file that cannot be used; the message names the file and the problem."""


@dataclass
class Volume:
    """An image array with its voxel-to-RAS-mm affine and the file it came from."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return voxel_spacing(self.affine)

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"PIR"``: the direction each array axis increases towards."""
        return axis_codes(self.affine)


@dataclass
class CaseFiles:
    """The files of one raw case (``<root>/raw/<case>/``)."""

    case: str
    folder: Path
    ct: Path | None
    mask: Path | None

    @property
    def centroids(self) -> Path:
        """Where the centroid JSON (docs/design.md, 'Centroid JSON') lives."""
        return self.folder / f"{self.case}.json"


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (column norms of the affine)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def axis_codes(affine: np.ndarray) -> str:
    """Orientation codes of an affine, e.g. ``"RAS"`` or ``"PIR"``."""
    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices (N, 3) to RAS millimetres (N, 3)."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Map RAS millimetres (N, 3) to continuous voxel indices (N, 3)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return xyz @ inverse[:3, :3].T + inverse[:3, 3]


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a NIfTI file into (array, affine), turning every failure into ``ImageIOError``."""
    if not path.exists():
        raise ImageIOError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as err:
        raise ImageIOError(f"{path}: cannot read NIfTI image ({type(err).__name__}: {err})") from err
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ImageIOError(f"{path}: expected a 3D image, got shape {array.shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageIOError(f"{path}: invalid (singular or non-finite) affine")
    return array, affine


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a DICOM series folder with SimpleITK as (array in (i, j, k) order, RAS affine)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageIOError(f"{folder}: no DICOM series found in folder")
    if len(series) > 1:
        raise ImageIOError(f"{folder}: {len(series)} DICOM series in one folder; keep one series per folder")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageIOError(f"{folder}: cannot read DICOM series ({err})") from err
    # SimpleITK arrays are (k, j, i); its geometry is LPS.
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps_affine = np.eye(4)
    lps_affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    lps_affine[:3, 3] = image.GetOrigin()
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine


def read_grid(path: str | Path) -> Volume:
    """The voxel grid of a NIfTI file from its header alone (an empty array of the right shape).

    Lets a CT/mask mismatch be reported before either volume is decoded. DICOM
    folders are decoded, since their geometry is spread over the slice files.
    """
    path = Path(path)
    if path.is_dir():
        volume = load_ct(path)
        return Volume(np.broadcast_to(np.float32(0), volume.array.shape), volume.affine, path)
    if not path.exists():
        raise ImageIOError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as err:
        raise ImageIOError(f"{path}: cannot read NIfTI header ({type(err).__name__}: {err})") from err
    shape = tuple(int(n) for n in image.shape[:3])
    return Volume(np.broadcast_to(np.float32(0), shape), np.asarray(image.affine, dtype=np.float64), path)


def load_ct(path: str | Path) -> Volume:
    """Load a CT as float32 Hounsfield units (a NIfTI file or a DICOM series folder).

    NaN or infinite voxels are an error: they would silently poison windowing and training.
    """
    path = Path(path)
    array, affine = _read_dicom_series(path) if path.is_dir() else _read_nifti(path)
    ct = np.asarray(array, dtype=np.float32)
    bad = ~np.isfinite(ct)
    if bad.any():
        raise ImageIOError(f"{path}: CT contains {int(bad.sum())} NaN or infinite voxels")
    return Volume(ct, affine, path)


def load_mask(path: str | Path, label_scheme: str = "verse") -> Volume:
    """Load a vertebra label mask as int16 VerSe ids (0 = background).

    ``label_scheme`` ``totalseg``: the file holds TotalSegmentator v2 ``total`` ids, mapped to VerSe
    ids (``data.labels.totalseg_to_verse``; other structures become background).
    """
    path = Path(path)
    array, affine = _read_nifti(path)
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.integer):
        finite = np.isfinite(values)
        if not finite.all():
            raise ImageIOError(f"{path}: mask contains NaN or infinite voxels")
        if np.any(values != np.round(values)):
            raise ImageIOError(f"{path}: mask has non-integer values; expected vertebra label ids")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ImageIOError(f"{path}: mask values {values.min()}..{values.max()} outside label range 0..255")
    if label_scheme == "totalseg":
        values = totalseg_to_verse(values)
    elif label_scheme != "verse":
        raise ImageIOError(f"{path}: unknown label scheme {label_scheme!r}; expected one of {LABEL_SCHEMES}")
    return Volume(values.astype(np.int16), affine, path)


def check_same_grid(first: Volume, second: Volume, tolerance_mm: float = AFFINE_TOLERANCE_MM) -> None:
    """Raise ``ImageIOError`` naming both files unless the volumes share shape and affine."""
    names = f"{first.path} and {second.path}"
    if first.array.shape != second.array.shape:
        raise ImageIOError(f"{names}: shapes differ ({first.array.shape} vs {second.array.shape})")
    difference = float(np.abs(first.affine - second.affine).max())
    if difference > tolerance_mm:
        raise ImageIOError(f"{names}: affines differ by up to {difference:.4g} mm (tolerance {tolerance_mm} mm)")


def load_ct_and_mask(ct_path: str | Path, mask_path: str | Path) -> tuple[Volume, Volume]:
    """Load a CT and its mask and check that they lie on the same voxel grid."""
    ct = load_ct(ct_path)
    mask = load_mask(mask_path)
    check_same_grid(ct, mask)
    return ct, mask


def reorient(volume: Volume, codes: str = "RAS") -> Volume:
    """Transpose/flip the array so its axes point along ``codes``; the affine follows."""
    current = nio.io_orientation(volume.affine)
    target = nio.axcodes2ornt(tuple(codes))
    transform = nio.ornt_transform(current, target)
    array = nio.apply_orientation(volume.array, transform)
    affine = volume.affine @ nio.inv_ornt_aff(transform, volume.array.shape)
    return Volume(np.ascontiguousarray(array), affine, volume.path)


def window_hu(hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Map HU linearly from ``window`` to [-1, 1] (float32, clipped)."""
    low, high = float(window[0]), float(window[1])
    if high <= low:
        raise ValueError(f"window {window}: upper bound must exceed lower bound")
    scaled = (np.asarray(hu, dtype=np.float32) - low) * np.float32(2.0 / (high - low)) - np.float32(1.0)
    return np.clip(scaled, -1.0, 1.0)


def unwindow(values: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Inverse of :func:`window_hu` (values in [-1, 1] back to HU, float32)."""
    low, high = float(window[0]), float(window[1])
    return ((np.asarray(values, dtype=np.float32) + 1.0) * np.float32((high - low) / 2.0) + np.float32(low)).astype(
        np.float32
    )


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype: np.dtype | type | None = None) -> Path:
    """Write a NIfTI image atomically (temporary file, then rename); parents are created."""
    path = Path(path)
    data = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def _first_existing(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.exists():
            return candidate
    return None


def find_case_files(case_dir: str | Path) -> CaseFiles:
    """Locate the CT and mask of a raw case folder.

    Accepts ``<case>.nii.gz`` / ``<case>_msk.nii.gz``, the VerSe names
    ``<case>_ct.nii.gz`` / ``<case>_seg-vert_msk.nii.gz`` and, for the CT, a
    DICOM series folder (``<case>/`` or ``dicom/`` inside the case folder).
    """
    folder = Path(case_dir)
    if not folder.is_dir():
        raise ImageIOError(f"{folder}: case folder not found")
    case = folder.name
    mask = _first_existing(folder, [f"{case}_msk.nii.gz", f"{case}_msk.nii", f"{case}_seg-vert_msk.nii.gz"])
    if mask is None:
        masks = sorted(folder.glob("*_seg-vert_msk.nii.gz")) + sorted(folder.glob("*_msk.nii.gz"))
        mask = masks[0] if masks else None
    ct = _first_existing(folder, [f"{case}.nii.gz", f"{case}.nii", f"{case}_ct.nii.gz", "dicom", "DICOM", case])
    if ct is None:
        cts = sorted(folder.glob("*_ct.nii.gz"))
        ct = cts[0] if cts else None
    return CaseFiles(case=case, folder=folder, ct=ct, mask=mask)


def list_cases(root: str | Path) -> list[CaseFiles]:
    """All case folders under ``<root>/raw/``, sorted by name."""
    raw = Path(root) / "raw"
    if not raw.is_dir():
        raise ImageIOError(f"{raw}: raw data folder not found")
    return [find_case_files(folder) for folder in sorted(p for p in raw.iterdir() if p.is_dir())]
