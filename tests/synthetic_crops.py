"""Tiny synthetic straightened crops with box-shaped vertebral bodies of known heights.

The CT value of voxel (row, col, z) is ``ROW_HU * row + col`` HU, so every row of a slice is
distinguishable and tests can check which source row landed where. Bodies are boxes whose height
shrinks by ``TAPER_ROWS`` rows in the outer sagittal slices (so the height depends on the slice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.crops import crop_affine, write_crop
from data.labels import split_key, vertebra_name
from util.fileio import write_json

CROP_SIZE = (64, 64, 16)
SPACING_MM = (0.8, 1.0, 2.0)
ROW_HU = 37
BODY_COLS = (20, 44)  # A->P columns [start, stop)
BODY_Z = (2, 14)  # R->L slices [start, stop)
TAPER_ROWS = 2  # the body is this many rows shorter where |z - centre| >= 4
GAP_ROWS = 4
HEIGHTS = {18: 10, 19: 11, 20: 12, 21: 12, 22: 13, 23: 14}
WIDE_WINDOW = (-1000.0, 3000.0)  # keeps every synthetic CT value distinct after windowing
STRAY_BLOB = (slice(1, 4), slice(2, 5), 8)  # a 9-px island of the target label, below min_component_px


def body_height_rows(label: int, z: int) -> int:
    """Number of rows of the body of ``label`` in sagittal slice ``z`` (0 outside the body)."""
    if not BODY_Z[0] <= z < BODY_Z[1]:
        return 0
    centre = (BODY_Z[0] + BODY_Z[1]) // 2
    return HEIGHTS[label] - (TAPER_ROWS if abs(z - centre) >= 4 else 0)


def body_rows(labels: list[int], target: int, z: int) -> dict[int, tuple[int, int]]:
    """Inclusive rows of each body in slice ``z`` of the crop centred on ``target`` (target centre at row 32)."""
    rows: dict[int, tuple[int, int]] = {}
    full = {lab: HEIGHTS[lab] for lab in labels}
    top = {target: CROP_SIZE[0] // 2 - full[target] // 2}
    index = labels.index(target)
    for lab_above, lab in zip(reversed(labels[:index]), reversed(labels[: index + 1])):
        top[lab_above] = top[lab] - GAP_ROWS - full[lab_above]
    for lab_below, lab in zip(labels[index + 1:], labels[index:]):
        top[lab_below] = top[lab] + full[lab] + GAP_ROWS
    for lab in labels:
        height = body_height_rows(lab, z)
        if height:
            start = top[lab] + (full[lab] - height) // 2
            rows[lab] = (start, start + height - 1)
    return rows


def make_crop_arrays(labels: list[int], target: int, stray_blob: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(CT HU int16, label uint8) arrays of the crop of ``target`` (axes S->I, A->P, R->L)."""
    rows_idx, cols_idx, z_idx = np.meshgrid(*(np.arange(n) for n in CROP_SIZE), indexing="ij")
    ct = (ROW_HU * rows_idx + cols_idx + 0 * z_idx).astype(np.int16)
    label_map = np.zeros(CROP_SIZE, dtype=np.uint8)
    for z in range(CROP_SIZE[2]):
        for lab, (first, last) in body_rows(labels, target, z).items():
            label_map[max(first, 0):max(last + 1, 0), BODY_COLS[0]:BODY_COLS[1], z] = lab
    if stray_blob:
        label_map[STRAY_BLOB] = target
    return ct, label_map


def write_synthetic_cohort(root: Path, cases: dict[str, str] | None = None, labels: list[int] | None = None,
                           grades: dict[str, int] | None = None) -> tuple[Path, Path]:
    """Write crops for every vertebra of every case and a split JSON; returns (dataroot, split path).

    ``cases`` maps case id -> split name (default: two train cases and one val case); ``grades``
    maps vertebra keys to Genant grades (default 0).
    """
    cases = cases or {"syn001": "train", "syn002": "train", "syn003": "val"}
    labels = labels or sorted(HEIGHTS)
    grades = grades or {}
    dataroot = root / "straightened"
    split: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for case, split_name in cases.items():
        for target in labels:
            key = split_key(case, target)
            ct, label_map = make_crop_arrays(labels, target, stray_blob=True)
            affine = crop_affine(SPACING_MM, np.zeros(3), CROP_SIZE)
            sidecar = {"case": case, "label": target, "name": vertebra_name(target), "crop_size": list(CROP_SIZE),
                       "spacing_mm": list(SPACING_MM), "axes": "IPL",
                       "centre_voxel": [n // 2 for n in CROP_SIZE], "has_ct": True}
            write_crop(dataroot, key, ct, label_map, affine, sidecar)
            split[split_name][key] = grades.get(key, 0)
    split_path = root / "vertebra_data.json"
    write_json(split_path, split)
    return dataroot, split_path


def compress_vertebra(label_map: np.ndarray, label: int, factor: float) -> np.ndarray:
    """The crop with vertebra ``label`` squeezed along axis 0 by ``factor`` about its centre row."""
    target = label_map == label
    rows = np.flatnonzero(target.any(axis=(1, 2)))
    centre = (rows[0] + rows[-1]) / 2.0
    source = np.rint(centre + (np.arange(label_map.shape[0]) - centre) / factor).astype(int)
    inside = (source >= 0) & (source < label_map.shape[0])
    squeezed = np.zeros_like(target)
    squeezed[inside] = target[source[inside]]
    compressed = label_map.copy()
    compressed[target] = 0
    compressed[squeezed] = label
    return compressed
