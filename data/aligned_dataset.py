"""Masked 2.5D slices of straightened vertebra crops for HealthiVert-GAN (``--dataset_mode aligned``;
docs/design.md, 'Masked slice').

Each item is one slice of one vertebra, sampled from the central 4/5 of the target's extent along
the slicing axis (triangular weights peaking at the centre; the centre slice in evaluation). The CT
is windowed from HU to [-1, 1] (``--hu_window``), the target is cut out and a band of
``--mask_height`` mm is opened at its place (``data.masking``). Crops are decoded once into a
memory-mapped cache (``data.crops.CropCache``), so an item costs a few slice copies.

Item dict (what ``model.set_input`` consumes; images (1, H, W) float32, H = crop rows,
W = ``data.masking.canvas_width``):

- ``masked_ct``: windowed CT with the target cut out, band -1 (``data.masking.BAND_FILL_VALUE``);
  ``real_ct``: the windowed slice;
- ``band_mask``: 1 in the band;  ``offset_plane``: constant plane r = |z - z_c| / extent * 2;
- ``cam``: shifted attention map (zeros without maps);  ``neighbour_label``: shifted mask of the
  healthy neighbours;  ``target_label``: target mask in the original slice;
- ``target_top``, ``target_bottom`` (inclusive rows x1, x2), ``band_top``, ``band_centre`` (int rows);
- ``height_px`` = x2 - x1 (float, rows) and ``height_mm`` = height_px * row spacing (float, mm);
- ``key`` (``<case>_<label>``) and ``slice_index`` (int, index along the slicing axis).
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.crops import CachedCrop, CropCache, crop_paths, default_split_json, read_split, require_listed_crops
from data.image_io import ImageIOError, window_hu
from data.labels import parse_key
from data.loader import LoaderSettings
from data.masking import (
    CENTRAL_FRACTION,
    CT_CANVAS_FILL,
    MaskingSettings,
    add_masking_options,
    canvas_width,
    fits_in_band,
    make_masked_slice,
    paste_columns,
    slice_centre,
    slice_offset_ratio,
    slice_sampling_weights,
    target_row_extents,
    target_slices,
)
from data.planes import PLANES
from util.cli import add_option
from util.protocol import Protocol
from util.settings import FromOptions


def _path_or_none(value: str | Path | None) -> Path | None:
    """``Path(value)``, or ``None`` for an absent or empty option."""
    return Path(value) if value else None


@dataclass(frozen=True)
class AlignedDatasetSettings(FromOptions):
    """The data flags of the masked-slice dataset (docs/design.md, 'Settings and defaults').

    split_json: split file (``None``: ``<dataroot>/../vertebra_data.json``); cache_dir: decoded-crop cache
    (``None``: ``<dataroot>/.cache/crops``); cam_dir: attention maps ``<key>.nii.gz`` (``None``: all zeros);
    max_dataset_size: at most this many healthy vertebrae of the split, by sorted key (``inf``: all);
    max_healthy_grade: Genant grade up to which a vertebra counts as healthy; seed: a slice is drawn
    with ``(seed, epoch, index)`` (the loader's ``--seed``).
    """

    split_json: Path | None = None
    cache_dir: Path | None = None
    cam_dir: Path | None = None
    max_dataset_size: float = math.inf
    max_healthy_grade: int = 1
    seed: int = LoaderSettings.seed

    def __post_init__(self) -> None:
        object.__setattr__(self, "split_json", _path_or_none(self.split_json))
        object.__setattr__(self, "cache_dir", _path_or_none(self.cache_dir))
        object.__setattr__(self, "cam_dir", _path_or_none(self.cam_dir))
        object.__setattr__(self, "max_dataset_size", float(self.max_dataset_size))
        object.__setattr__(self, "max_healthy_grade", int(self.max_healthy_grade))
        object.__setattr__(self, "seed", int(self.seed))

    def split_path(self, dataroot: str | Path) -> Path:
        """The split JSON: ``split_json``, else ``<dataroot>/../vertebra_data.json``."""
        return self.split_json or default_split_json(dataroot)

    def limit(self, keys: list[str]) -> list[str]:
        """The first ``max_dataset_size`` of ``keys`` (all when it is ``inf``)."""
        return keys if self.max_dataset_size == math.inf else keys[: int(self.max_dataset_size)]


@dataclass
class VertebraEntry:
    """One usable vertebra: its slice range along the plane's axis and the slices that can be masked."""

    key: str
    case: str
    label: int
    first: int  # first / last slice (inclusive) containing the target
    last: int
    candidates: np.ndarray  # usable slices of the central range
    probabilities: np.ndarray  # triangular sampling weights of ``candidates`` (sum 1)
    centre: int  # usable slice nearest the vertebra centre (evaluation)


def healthy_keys(split: dict[str, dict[str, int]], phase: str, max_healthy_grade: int) -> list[str]:
    """Sorted keys of split ``phase`` with Genant grade <= ``max_healthy_grade``."""
    return sorted(key for key, grade in split.get(phase, {}).items() if grade <= max_healthy_grade)


def healthy_labels_by_case(split: dict[str, dict[str, int]], max_healthy_grade: int,
                           phases: Collection[str] | None = None) -> dict[str, set[int]]:
    """Labels of the healthy vertebrae of each case, over the splits ``phases`` (default all): the
    neighbours the generator segments."""
    labels: dict[str, set[int]] = {}
    for phase, entries in split.items():
        if phases is not None and phase not in phases:
            continue
        for key, grade in entries.items():
            if grade <= max_healthy_grade:
                case, label = parse_key(key)
                labels.setdefault(case, set()).add(label)
    return labels


class AlignedDataset(Dataset):
    """Masked-slice dataset over the healthy vertebrae of one split (docs/design.md, 'Masked slice')."""

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        """Dataset flags (pix2pix convention); flags another setter already defined are kept."""
        add_masking_options(parser)
        add_option(parser, "--max_healthy_grade", type=int, default=AlignedDatasetSettings.max_healthy_grade,
                   choices=[0, 1, 2, 3],
                   help="vertebrae with a Genant grade up to this count as healthy (trained on / neighbours)")
        return parser

    def __init__(self, opt: argparse.Namespace, phase: str | None = None, random_slices: bool | None = None,
                 show_progress: bool = True) -> None:
        """Index the healthy vertebrae of split ``phase`` (default ``opt.phase``) and validate their crops.

        Raises ``ValueError``/``ImageIOError`` naming the file for an empty split, a split without
        healthy vertebrae, missing crops, crops of the wrong shape or spacing and attention maps on
        another grid. ``random_slices`` (default: training phase) samples slices; otherwise each
        vertebra gives its centre slice.
        """
        self.opt = opt
        self.phase = phase or opt.phase
        self.random_slices = self.phase == "train" if random_slices is None else random_slices
        if opt.plane not in PLANES:
            raise ValueError(f"--plane {opt.plane!r}: expected one of {PLANES}")
        self.plane = opt.plane
        self.masking = MaskingSettings.from_options(opt)
        self.window = self.masking.hu_window
        self.min_component_px = self.masking.min_component_px
        self.settings = AlignedDatasetSettings.from_options(opt)
        split_path = self.settings.split_path(opt.dataroot)
        split = read_split(split_path)
        if not any(split.values()):
            raise ValueError(f"{split_path}: the split is empty (no vertebra in train, val or test)")
        if not split.get(self.phase):
            raise ValueError(f"{split_path}: split {self.phase!r} lists no vertebra")
        max_grade = self.settings.max_healthy_grade
        keys = healthy_keys(split, self.phase, max_grade)
        if not keys:
            raise ValueError(f"{split_path}: split {self.phase!r} has no healthy vertebra "
                             f"(Genant grade <= {max_grade}; see --max_healthy_grade)")
        keys = self.settings.limit(keys)
        self.protocol = Protocol.from_options(opt)
        self.neighbours = healthy_labels_by_case(split, max_grade,
                                                 [self.phase] if self.protocol.neighbours_same_split else None)
        self.cache = CropCache(opt.dataroot, self.settings.cache_dir, self.settings.cam_dir)
        self._check_files_exist(keys, split_path)
        self.entries = self._index(keys, show_progress)
        self._warn_missing_attention(keys)

    def _check_files_exist(self, keys: list[str], split_path: Path) -> None:
        require_listed_crops(self.opt.dataroot, keys, split_path)

    def _index(self, keys: list[str], show_progress: bool) -> list[VertebraEntry]:
        from tqdm import tqdm

        entries: list[VertebraEntry] = []
        unusable: list[str] = []
        reference: CachedCrop | None = None
        for key in tqdm(keys, desc=f"indexing {self.phase} crops", unit="crop", disable=not show_progress,
                        leave=False):
            crop = self.cache.get(key, self.plane)
            if reference is None:
                reference = crop
                self._set_geometry(crop)
            self._check_geometry(crop, reference)
            entry = self._entry(key, crop)
            if entry is None:
                unusable.append(key)
            else:
                entries.append(entry)
        if unusable:
            warnings.warn(f"{len(unusable)} {self.phase} vertebra(e) have no slice whose target fits the "
                          f"{self.masking.mask_height_mm:g} mm band and are skipped: {', '.join(unusable[:10])}"
                          f"{' ...' if len(unusable) > 10 else ''}", stacklevel=3)
        if not entries:
            raise ValueError(f"{self.opt.dataroot}: no usable {self.phase} vertebra (every target is absent or "
                             f"taller than the {self.masking.mask_height_mm:g} mm band; raise --mask_height)")
        return entries

    def _set_geometry(self, crop: CachedCrop) -> None:
        self.crop_shape = tuple(int(n) for n in crop.crop_shape)
        self.spacing_mm = np.asarray(crop.spacing_mm, dtype=np.float64)
        self.row_spacing_mm = float(self.spacing_mm[0])
        self.mask_height_px = self.masking.mask_height_px(self.row_spacing_mm)
        self.image_shape = (self.crop_shape[0], canvas_width(self.crop_shape))
        if self.mask_height_px > self.crop_shape[0]:
            raise ValueError(f"--mask_height {self.masking.mask_height_mm:g} mm = {self.mask_height_px} rows exceeds "
                             f"the crop height of {self.crop_shape[0]} rows")

    def _check_geometry(self, crop: CachedCrop, reference: CachedCrop) -> None:
        path = crop_paths(self.opt.dataroot, crop.key).label
        expected = crop.sidecar.get("crop_size")
        if expected is not None and list(expected) != list(crop.crop_shape):
            raise ImageIOError(f"{path}: crop shape {list(crop.crop_shape)} differs from its sidecar "
                               f"crop_size {expected}")
        if tuple(crop.crop_shape) != self.crop_shape:
            raise ImageIOError(f"{path}: crop shape {tuple(crop.crop_shape)} differs from {self.crop_shape} of "
                               f"{reference.key}; straighten every vertebra with the same --crop_size")
        if not np.allclose(crop.spacing_mm, self.spacing_mm, atol=1e-3):
            raise ImageIOError(f"{path}: voxel spacing {np.round(crop.spacing_mm, 4).tolist()} mm differs from "
                               f"{np.round(self.spacing_mm, 4).tolist()} mm of {reference.key}")

    def _entry(self, key: str, crop: CachedCrop) -> VertebraEntry | None:
        """Slice range and usable slices of one vertebra (``None`` when no slice can be masked)."""
        case, label = parse_key(key)
        selected = target_slices(crop.label_map, label, self.masking.min_island_voxels)
        if selected is None:
            raise ImageIOError(f"{crop_paths(self.opt.dataroot, key).label}: target label {label} is not in the crop")
        first, last = selected.first, selected.last
        top, bottom = target_row_extents(crop.label_map[selected.start:selected.stop + 1], label,
                                         self.min_component_px)
        usable = fits_in_band(top, bottom, self.mask_height_px, self.crop_shape[0])
        indices, weights = slice_sampling_weights(first, last, CENTRAL_FRACTION)
        if not usable.any():
            return None
        candidates = indices[usable]
        probabilities = weights[usable] / weights[usable].sum()
        centre = int(candidates[np.argmin(np.abs(candidates - slice_centre(first, last, CENTRAL_FRACTION)))])
        return VertebraEntry(key, case, label, first, last, candidates, probabilities, centre)

    def _warn_missing_attention(self, keys: list[str]) -> None:
        cam_dir = self.settings.cam_dir
        if cam_dir is None:
            warnings.warn("no --cam_dir given: attention maps are all zeros (no fracture attention)", stacklevel=3)
            return
        missing = [key for key in keys if not (cam_dir / f"{key}.nii.gz").is_file()]
        if missing:
            warnings.warn(f"{cam_dir}: {len(missing)} of {len(keys)} attention maps missing "
                          f"(e.g. {missing[0]}.nii.gz); using zeros for them", stacklevel=3)

    def __len__(self) -> int:
        return len(self.entries)

    def slice_index(self, entry: VertebraEntry, epoch: int, index: int) -> int:
        """Slice of ``entry`` for this epoch: triangular-weighted random (seeded by seed, epoch, index) or the
        centre."""
        if not self.random_slices:
            return entry.centre
        rng = np.random.default_rng([self.settings.seed, epoch, index])
        return int(rng.choice(entry.candidates, p=entry.probabilities))

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``index`` (or ``(epoch, index)`` from :class:`EpochSampler`): see the module docstring."""
        epoch, index = item if isinstance(item, tuple) else (0, item)
        entry = self.entries[index]
        crop = self.cache.get(entry.key, self.plane)
        z = self.slice_index(entry, epoch, index)
        width = self.image_shape[1]
        ct = paste_columns(window_hu(crop.ct_hu[z], self.window), width, CT_CANVAS_FILL)
        label = paste_columns(np.asarray(crop.label_map[z]), width, 0)
        cam = None if crop.cam is None else paste_columns(np.asarray(crop.cam[z], dtype=np.float32), width, 0.0)
        masked = make_masked_slice(ct, label, entry.label, cam, self.mask_height_px, self.min_component_px,
                                   neighbour_labels=self.neighbours.get(entry.case, set()),
                                   target_is_neighbour=self.protocol.target_in_neighbour_mask)
        if masked is None:
            raise RuntimeError(f"{entry.key}: slice {z} cannot be masked (index inconsistent with the crop cache)")
        offset = np.float32(slice_offset_ratio(z, entry.first, entry.last, CENTRAL_FRACTION))
        return {
            "masked_ct": _image(masked.masked_ct),
            "real_ct": _image(ct),
            "band_mask": _image(masked.band_mask),
            "offset_plane": torch.from_numpy(np.full((1,) + self.image_shape, offset, dtype=np.float32)),
            "cam": _image(masked.cam),
            "neighbour_label": _image(masked.neighbour_label),
            "target_label": _image(masked.target_label_mask),
            "target_top": masked.target_top,
            "target_bottom": masked.target_bottom,
            "band_top": masked.band_top,
            "band_centre": masked.band_centre,
            "height_px": float(masked.height_px),
            "height_mm": float(masked.height_px * self.row_spacing_mm),
            "key": entry.key,
            "slice_index": z,
        }


def _image(array: np.ndarray) -> torch.Tensor:
    """(H, W) array -> (1, H, W) float32 tensor (a copy, safe to pin and batch)."""
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True)[None])
