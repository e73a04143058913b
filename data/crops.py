"""Straightened per-vertebra crops and the split JSON (docs/design.md, 'Straightened crops' and 'Split JSON').

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

from data.attention_maps import attention_map_path, load_attention_map
from data.image_io import ImageIOError, Volume, load_ct, load_mask, save_nifti, voxel_spacing
from data.labels import parse_key
from data.masking import plane_slab
from util.fileio import atomic_path, read_json, write_json

DEFAULT_CROP_SIZE = (256, 256, 64)  # crop shape (S->I, A->P, R->L), straighten_mask_3d.py --crop_size
DEFAULT_SPACING_MM = 1.0  # isotropic crop voxel size, straighten_mask_3d.py --spacing

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


def missing_crops(dataroot: str | Path, keys: list[str], need_ct: bool = True) -> list[Path]:
    """The absent crop files of ``keys``: label crops, and CT crops if ``need_ct``."""
    missing = []
    for key in keys:
        paths = crop_paths(dataroot, key)
        missing += [path for path in ((paths.ct, paths.label) if need_ct else (paths.label,)) if not path.is_file()]
    return missing


def require_listed_crops(dataroot: str | Path, keys: list[str], listed_in: str | Path, need_ct: bool = True) -> None:
    """The one rule of every step for a listed vertebra without a crop: refuse before any work.

    Raises :class:`ImageIOError` with one line naming ``listed_in`` (the split JSON), ``dataroot``
    and the full list of missing crops.
    """
    refuse_missing_crops(missing_crops(dataroot, keys, need_ct), listed_in)


def refuse_missing_crops(missing: list[Path], listed_in: str | Path) -> None:
    """Raise :class:`ImageIOError` listing every missing crop file (no-op when ``missing`` is empty)."""
    if missing:
        raise ImageIOError(f"{listed_in}: {len(missing)} crop file(s) of listed vertebrae not found: "
                           f"{', '.join(map(str, missing))}; straighten them or remove them from the list")


def case_crop_keys(dataroot: str | Path, case: str) -> list[str]:
    """Keys of every crop file (CT, label or sidecar) of ``case`` under ``dataroot``."""
    root = Path(dataroot)
    keys = set()
    for folder, pattern in ((root / "CT", "*.nii.gz"), (root / "label", "*.nii.gz"), (root / "label", "*.json")):
        for path in folder.glob(f"{case}_{pattern}"):
            key = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
            with_case = key.rpartition("_")
            if with_case[0] == case and with_case[2].isdigit():
                keys.add(key)
    return sorted(keys)


def remove_crops(dataroot: str | Path, keys: list[str]) -> None:
    """Delete the CT crop, label crop and sidecar of each key (absent files are ignored)."""
    for key in keys:
        paths = crop_paths(dataroot, key)
        for path in (paths.ct, paths.label, paths.sidecar):
            path.unlink(missing_ok=True)


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
                f"{paths.ct} and {paths.label}: crop shapes differ "
                f"({ct_volume.array.shape} vs {label_volume.array.shape})"
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


def default_split_json(dataroot: str | Path) -> Path:
    """``<dataroot>/../vertebra_data.json``: where the phantom cohort and the reference keep the split."""
    return Path(dataroot).resolve().parent / "vertebra_data.json"


def read_split(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a split JSON ``{"train": {key: grade}, "val": {...}, "test": {...}}`` (docs/design.md, 'Split JSON').

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


CACHE_VERSION = 2


def file_signature(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file (``None`` when absent): what the crop cache is invalidated by."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [int(stat.st_size), int(stat.st_mtime_ns)]


@dataclass
class CachedCrop:
    """A decoded crop as memory-mapped stacks of 2-D slices in one plane.

    ``ct_hu`` (int16 or float32 HU), ``label_map`` (uint8) and ``cam`` (float16 in [0, 1], or ``None``)
    are (n_slices, rows, cols) with rows superior -> inferior (see ``data.masking.plane_slab``).
    ``crop_shape`` is the crop's array shape (S->I, A->P, R->L) and ``spacing_mm`` its voxel size.
    """

    key: str
    plane: str
    ct_hu: np.ndarray
    label_map: np.ndarray
    cam: np.ndarray | None
    crop_shape: tuple[int, int, int]
    spacing_mm: np.ndarray
    sidecar: dict[str, Any]


class CropCache:
    """Decode each crop (and its attention map) once into uncompressed ``.npy`` files, then memory-map them.

    Files live under ``<cache_dir>/<plane>/`` (default ``<dataroot>/.cache/crops``) in slice-major
    layout for the plane, so reading one slice touches one contiguous block. A JSON record per crop
    holds the size and mtime of every source file (CT, label, sidecar, attention map); when any of
    them changes, appears or disappears the entry is rebuilt. Writes are atomic (the record last),
    so concurrent builders (DataLoader workers, DDP ranks) never see half-written entries.
    """

    def __init__(self, dataroot: str | Path, cache_dir: str | Path | None = None,
                 cam_dir: str | Path | None = None) -> None:
        self.dataroot = Path(dataroot)
        self.cache_dir = Path(cache_dir) if cache_dir else self.dataroot / ".cache" / "crops"
        self.cam_dir = Path(cam_dir) if cam_dir else None
        self._open: dict[tuple[str, str], tuple[dict[str, Any], CachedCrop]] = {}

    def cam_path(self, key: str) -> Path | None:
        """Attention map of ``key`` (``<cam_dir>/<key>.nii.gz``), or ``None`` without a ``cam_dir``."""
        return attention_map_path(self.cam_dir, key) if self.cam_dir else None

    def source_signatures(self, key: str) -> dict[str, list[int] | None]:
        """Size and mtime of every source file of ``key`` (``None`` for absent files)."""
        paths = crop_paths(self.dataroot, key)
        cam = self.cam_path(key)
        return {"ct": file_signature(paths.ct), "label": file_signature(paths.label),
                "sidecar": file_signature(paths.sidecar), "cam": file_signature(cam) if cam else None}

    def entry_paths(self, key: str, plane: str) -> dict[str, Path]:
        """Cache files of ``key`` in ``plane``: record JSON and the three arrays."""
        folder = self.cache_dir / plane
        return {"record": folder / f"{key}.json", "ct": folder / f"{key}.ct.npy",
                "label": folder / f"{key}.label.npy", "cam": folder / f"{key}.cam.npy"}

    def get(self, key: str, plane: str = "sagittal") -> CachedCrop:
        """The memory-mapped crop ``key`` in ``plane``, decoding the NIfTI files only when the cache is stale."""
        signatures = self.source_signatures(key)
        if signatures["label"] is None:
            raise ImageIOError(f"{crop_paths(self.dataroot, key).label}: label crop not found")
        if signatures["ct"] is None:
            raise ImageIOError(f"{crop_paths(self.dataroot, key).ct}: CT crop not found")
        opened = self._open.get((key, plane))
        if opened is not None and opened[0] == signatures:
            return opened[1]
        paths = self.entry_paths(key, plane)
        record = self._read_record(paths["record"])
        if record is None or record.get("version") != CACHE_VERSION or record.get("sources") != signatures:
            record = self._build(key, plane, signatures, paths)
        crop = self._map(key, plane, record, paths)
        self._open[(key, plane)] = (signatures, crop)
        return crop

    @staticmethod
    def _read_record(path: Path) -> dict[str, Any] | None:
        try:
            return read_json(path)
        except (FileNotFoundError, ValueError):
            return None

    def _build(self, key: str, plane: str, signatures: dict[str, list[int] | None],
               paths: dict[str, Path]) -> dict[str, Any]:
        crop = load_crop(self.dataroot, key)
        ct = crop.ct_hu
        int16 = np.iinfo(np.int16)
        integral = bool(np.all(ct == np.rint(ct))) and ct.min() >= int16.min and ct.max() <= int16.max
        arrays = {"ct": ct.astype(np.int16) if integral else ct, "label": crop.label_map}
        cam_file = self.cam_path(key)
        if signatures["cam"] is not None and cam_file is not None:
            label = Volume(crop.label_map, crop.affine, crop_paths(self.dataroot, key).label)
            arrays["cam"] = load_attention_map(cam_file, label).astype(np.float16)  # 5e-4 precision, half the size
        record = {"version": CACHE_VERSION, "key": key, "plane": plane, "sources": signatures,
                  "crop_shape": list(crop.label_map.shape), "affine": crop.affine.tolist(),
                  "sidecar": crop.sidecar, "has_cam": "cam" in arrays}
        try:
            for name, array in arrays.items():
                with atomic_path(paths[name]) as tmp:
                    np.save(tmp, np.ascontiguousarray(plane_slab(array, plane)))
            write_json(paths["record"], record)
        except OSError as err:
            raise ImageIOError(f"{self.cache_dir}: cannot write the crop cache ({err.strerror or err}); "
                               "choose a writable --cache_dir") from err
        return record

    @staticmethod
    def _map(key: str, plane: str, record: dict[str, Any], paths: dict[str, Path]) -> CachedCrop:
        try:
            ct = np.load(paths["ct"], mmap_mode="r")
            label = np.load(paths["label"], mmap_mode="r")
            cam = np.load(paths["cam"], mmap_mode="r") if record["has_cam"] else None
        except (OSError, ValueError) as err:
            raise ImageIOError(f"{paths['record']}: crop cache entry unreadable ({err}); "
                               "delete the cache folder") from err
        return CachedCrop(key, plane, ct, label, cam, tuple(record["crop_shape"]),
                          voxel_spacing(np.asarray(record["affine"])), record["sidecar"])
