"""Straightened per-vertebra crops (DESIGN 3.3) and the split JSON (DESIGN 3.5).

A crop is a pair ``<dataroot>/CT/<key>.nii.gz`` (int16 HU) and
``<dataroot>/label/<key>.nii.gz`` (uint8 VerSe ids) plus the sidecar
``<dataroot>/label/<key>.json``. Array axes are (superior -> inferior,
anterior -> posterior, right -> left): orientation codes ``IPL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.image_io import ImageIOError, load_ct, load_mask, save_nifti, voxel_spacing
from data.labels import parse_key
from util.fileio import read_json, write_json

CROP_AXES = "IPL"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CropPaths:
    """Where the files of one crop live."""

    ct: Path
    label: Path
    sidecar: Path


@dataclass
class Crop:
    """One straightened vertebra crop; arrays are (S->I, A->P, R->L)."""

    key: str
    case: str
    label: int
    label_map: np.ndarray
    ct_hu: np.ndarray | None
    affine: np.ndarray
    sidecar: dict[str, Any]

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size in mm along the three crop axes."""
        return voxel_spacing(self.affine)


def crop_paths(dataroot: str | Path, key: str) -> CropPaths:
    """Paths of the CT crop, label crop and sidecar JSON of vertebra ``key``."""
    root = Path(dataroot)
    return CropPaths(root / "CT" / f"{key}.nii.gz", root / "label" / f"{key}.nii.gz", root / "label" / f"{key}.json")


def list_crop_keys(dataroot: str | Path) -> list[str]:
    """Keys (``<case>_<label>``) of every label crop under ``<dataroot>/label``."""
    label_dir = Path(dataroot) / "label"
    if not label_dir.is_dir():
        raise ImageIOError(f"{label_dir}: label crop folder not found")
    return sorted(p.name[: -len(".nii.gz")] for p in label_dir.glob("*.nii.gz"))


def crop_affine(spacing_mm: float | tuple[float, float, float], centre_world_ras: np.ndarray,
                crop_size: tuple[int, int, int]) -> np.ndarray:
    """Affine of an IPL crop whose centre voxel maps to ``centre_world_ras`` (mm).

    The straightened grid follows a curve, so this affine is exact only along the
    centre line; the sidecar JSON holds the true mapping back to the scan.
    """
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    affine = np.zeros((4, 4))
    affine[:3, 0] = [0.0, 0.0, -spacing[0]]  # axis 0 -> inferior
    affine[:3, 1] = [0.0, -spacing[1], 0.0]  # axis 1 -> posterior
    affine[:3, 2] = [-spacing[2], 0.0, 0.0]  # axis 2 -> left
    affine[3, 3] = 1.0
    centre_voxel = np.asarray(crop_size, dtype=np.float64) // 2
    affine[:3, 3] = np.asarray(centre_world_ras, dtype=np.float64) - affine[:3, :3] @ centre_voxel
    return affine


def load_crop(dataroot: str | Path, key: str, need_ct: bool = True) -> Crop:
    """Read one crop (label, sidecar and, if ``need_ct``, the CT in float32 HU)."""
    paths = crop_paths(dataroot, key)
    case, label = parse_key(key)
    label_volume = load_mask(paths.label)
    sidecar = read_json(paths.sidecar) if paths.sidecar.exists() else {}
    ct_hu = None
    if need_ct:
        ct_volume = load_ct(paths.ct)
        if ct_volume.array.shape != label_volume.array.shape:
            raise ImageIOError(
                f"{paths.ct} and {paths.label}: crop shapes differ ({ct_volume.array.shape} vs {label_volume.array.shape})"
            )
        ct_hu = ct_volume.array
    return Crop(key, case, label, label_volume.array.astype(np.uint8), ct_hu, label_volume.affine, sidecar)


def write_crop(dataroot: str | Path, key: str, ct_hu: np.ndarray | None, label_map: np.ndarray,
               affine: np.ndarray, sidecar: dict[str, Any]) -> CropPaths:
    """Write one crop atomically: int16 HU CT (if given), uint8 labels and the sidecar JSON."""
    paths = crop_paths(dataroot, key)
    if ct_hu is not None:
        if ct_hu.shape != label_map.shape:
            raise ValueError(f"{key}: CT crop {ct_hu.shape} and label crop {label_map.shape} differ in shape")
        hu = np.clip(np.rint(ct_hu), np.iinfo(np.int16).min, np.iinfo(np.int16).max)
        save_nifti(hu.astype(np.int16), affine, paths.ct)
    save_nifti(np.asarray(label_map).astype(np.uint8), affine, paths.label)
    write_json(paths.sidecar, sidecar)
    return paths


def read_split(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a split JSON ``{"train": {key: grade}, "val": {...}, "test": {...}}`` (DESIGN 3.5).

    Missing splits are empty; unknown splits, malformed keys and grades outside 0-3 are errors.
    """
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object with train/val/test, got {type(raw).__name__}")
    unknown = set(raw) - set(SPLITS)
    if unknown:
        raise ValueError(f"{path}: unknown split name(s) {sorted(unknown)}; expected {list(SPLITS)}")
    split: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        entries = raw.get(name, {})
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: split {name!r} must map '<case>_<label>' to a Genant grade")
        checked: dict[str, int] = {}
        for key, grade in entries.items():
            try:
                parse_key(key)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            if isinstance(grade, bool) or not isinstance(grade, (int, float)) or grade not in (0, 1, 2, 3):
                raise ValueError(f"{path}: {key} has grade {grade!r}; Genant grades are 0, 1, 2 or 3")
            checked[key] = int(grade)
        split[name] = checked
    return split


def split_of(split: dict[str, dict[str, int]], key: str) -> tuple[str, int] | None:
    """``(split name, grade)`` of a vertebra key, or ``None`` when the split does not list it."""
    for name, entries in split.items():
        if key in entries:
            return name, entries[key]
    return None
