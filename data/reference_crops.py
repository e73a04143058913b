"""Crops written by the published HealthiVert-GAN straightening, converted to our crop contract.

Published layout (its ``straighten_mask_3d.py`` and ``grad_CAM_3d_sagittal.py``)::

    <src>/CT/<case>_<v>.nii.gz      float64 grey 0..255 of the -300..800 HU window
    <src>/label/<case>_<v>.nii.gz   float64 integer VerSe ids (vertebral bodies)
    <src>/mask_2d/...               (not needed, ignored)
    <heatmaps>/<case>_<v>.nii.gz    float64 CAM in [0, 1] (also <key>_0 / <key>_1)

Our contract (docs/design.md, 'Straightened crops' and 'Attention maps'): ``CT/`` int16 HU,
``label/`` uint8 ids, a sidecar per crop, CAM float32 in ``<cam_out>/<key>.nii.gz``. Array axes are kept
as they are (the published crops are already rows S->I, columns A->P, slices R->L). The published files
carry the original scan's affine, which does not describe the crop grid, so the
imported crops get a nominal IPL affine of ``spacing_mm`` and a sidecar saying the
geometry back to the scan is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.crops import CROP_AXES, crop_affine, crop_paths, write_crop
from data.image_io import DEFAULT_WINDOW_HU, ImageIOError, load_ct, load_mask, save_nifti
from data.labels import VERTEBRA_NAMES, parse_key

GREY_MAX = 255.0
GREY_TOLERANCE = 1e-6  # float rounding of the published window
CAM_SUFFIXES = ("_0", "_1", "")  # the published inference script's order of CAM file names
NIFTI_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class ImportedCrop:
    """What one published crop became."""

    key: str
    ct: Path
    label: Path
    cam: Path | None


def grey_to_hu(grey: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Inverse of the published window: grey 0..255 -> HU (float64); clipped HU stay at the window ends."""
    low, high = window
    return low + np.asarray(grey, dtype=np.float64) * (high - low) / GREY_MAX


def published_keys(src: Path) -> list[str]:
    """Keys of the label crops of a published straightened folder (``<src>/label/<key>.nii.gz``)."""
    label_dir = src / "label"
    if not label_dir.is_dir():
        raise ImageIOError(f"{label_dir}: label folder not found (a published straightened folder has CT/ and label/)")
    return sorted(p.name[: -len(NIFTI_SUFFIX)] for p in label_dir.glob(f"*{NIFTI_SUFFIX}"))


def find_cam(cam_src: Path | None, key: str) -> Path | None:
    """The published CAM file of ``key`` (``<key>_0``, ``<key>_1`` or ``<key>``), or ``None``."""
    if cam_src is None:
        return None
    for suffix in CAM_SUFFIXES:
        path = cam_src / f"{key}{suffix}{NIFTI_SUFFIX}"
        if path.is_file():
            return path
    return None


def _read_grey_ct(path: Path) -> np.ndarray:
    grey = load_ct(path).array.astype(np.float64)  # float volume; finite values checked there
    low, high = float(grey.min()), float(grey.max())
    if low < -GREY_TOLERANCE or high > GREY_MAX + GREY_TOLERANCE:
        raise ImageIOError(f"{path}: values {low:g}..{high:g} outside the published grey range 0..255 "
                           f"(already in HU? then it is not a published crop)")
    return grey


def _read_cam(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    cam = load_ct(path).array  # float32 volume; finite values checked there
    if cam.shape != shape:
        raise ImageIOError(f"{path}: heatmap shape {cam.shape} differs from the crop's {shape}")
    if cam.min() < 0 or cam.max() > 1 + GREY_TOLERANCE:
        raise ImageIOError(f"{path}: heatmap values outside [0, 1]")
    return np.clip(cam, 0.0, 1.0)


def import_crop(src: Path, key: str, out: Path, cam_src: Path | None, cam_out: Path,
                spacing_mm: float = 1.0) -> ImportedCrop:
    """Convert one published crop (and its heatmap, when there is one); nothing is written on an error."""
    case, label = parse_key(key)
    ct_path, label_path = src / "CT" / f"{key}{NIFTI_SUFFIX}", src / "label" / f"{key}{NIFTI_SUFFIX}"
    if not ct_path.is_file():
        raise ImageIOError(f"{ct_path}: CT crop missing for {label_path}")
    labels = load_mask(label_path)
    if not np.any(labels.array == label):
        raise ImageIOError(f"{label_path}: target label {label} is not in the crop")
    grey = _read_grey_ct(ct_path)
    if grey.shape != labels.array.shape:
        raise ImageIOError(f"{ct_path} and {label_path}: shapes differ ({grey.shape} vs {labels.array.shape})")
    cam_path = find_cam(cam_src, key)
    cam = _read_cam(cam_path, grey.shape) if cam_path is not None else None
    shape = tuple(int(n) for n in grey.shape)
    affine = crop_affine(spacing_mm, np.zeros(3), shape)
    present = sorted(int(v) for v in np.unique(labels.array) if v != 0)
    sidecar = {
        "case": case, "label": label, "name": VERTEBRA_NAMES.get(label, str(label)), "crop_size": list(shape),
        "spacing_mm": [float(spacing_mm)] * 3, "axes": CROP_AXES, "centre_voxel": [n // 2 for n in shape],
        "has_ct": True, "source_ct": str(ct_path), "source_mask": str(label_path), "labels_in_crop": present,
        "geometry": "unknown: imported from a crop of the published straightening, whose file keeps the original "
                    "scan's affine (recorded as source_affine) and no centre line; results cannot be mapped back",
        "source_affine": np.round(labels.affine, 6).tolist(),
        "ct_from_grey": {"window_hu": list(DEFAULT_WINDOW_HU), "rule": "HU = low + grey * (high - low) / 255"},
        "source_cam": str(cam_path) if cam_path is not None else None,
    }
    paths = crop_paths(out, key)
    write_crop(out, key, grey_to_hu(grey), labels.array, affine, sidecar)
    cam_written = None
    if cam is not None:
        cam_written = save_nifti(cam, affine, cam_out / f"{key}{NIFTI_SUFFIX}")
    return ImportedCrop(key, paths.ct, paths.label, cam_written)
