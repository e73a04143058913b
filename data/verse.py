"""Lay a VerSe'19/'20 download (BIDS layout) out as ``<out>/raw/<case>/`` (docs/design.md, 'Raw input'), keeping the
official centroids.

The download holds, per scan, ``rawdata/sub-<id>/[ses-*/]sub-<id>[_<entities>]_ct.nii.gz`` and, in the
mirrored ``derivatives/`` tree, ``..._seg-vert_msk.nii.gz`` (vertebra labels, VerSe ids) and
``..._seg-subreg_ctd.json`` (centroids). Entities such as ``dir-ax`` (VerSe'20 acquisition direction)
or ``split-verse253`` (one subject scanned in several parts) stay in the case id, so every scan
becomes its own case: ``sub-gl003_dir-ax``.

Centroid JSON of VerSe: a list whose first entry is ``{"direc": ["P", "I", "R"]}`` (the axis codes
the coordinates refer to) followed by ``{"label", "X", "Y", "Z"}`` in voxel indices of the scan
reoriented to ``direc``. They are converted to voxel indices of the mask array as stored (axes
permuted and flipped, ``n - 1 - i`` on a flipped axis) and to RAS mm, and written as
``<case>.json`` in our format (``straighten/centroids.py``) with ``"source": "verse"``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as nio

from data.image_io import ImageIOError, check_same_grid, load_mask, read_grid, voxel_to_world
from data.labels import VERTEBRA_NAMES
from util.fileio import atomic_path, read_json, write_json

CT_SUFFIX = "_ct.nii.gz"
MASK_SUFFIX = "_seg-vert_msk.nii.gz"
CENTROID_SUFFIXES = ("_seg-subreg_ctd.json", "_seg-vert_ctd.json", "_ctd.json")
CENTROID_CHECK_MM = 20.0  # an official centroid this far from its label's voxels is reported


@dataclass(frozen=True)
class VerseScan:
    """One scan of the download: its case id and files (the centroid file may be missing)."""

    case: str
    ct: Path
    mask: Path | None
    centroids: Path | None


@dataclass
class ImportResult:
    """Outcome of one scan: the case folder written, notes, or the error."""

    case: str
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def find_scans(verse_root: str | Path) -> list[VerseScan]:
    """Every ``*_ct.nii.gz`` under a ``rawdata/`` folder of ``verse_root``, with its derivatives, sorted by case."""
    root = Path(verse_root)
    if not root.is_dir():
        raise ImageIOError(f"{root}: VerSe folder not found")
    scans = []
    for ct in sorted(root.rglob(f"*{CT_SUFFIX}")):
        parts = ct.relative_to(root).parts
        if "rawdata" not in parts:
            continue
        index = parts.index("rawdata")
        derivatives = root.joinpath(*parts[:index], "derivatives", *parts[index + 1:-1])
        case = ct.name[: -len(CT_SUFFIX)]
        mask = derivatives / f"{case}{MASK_SUFFIX}"
        centroids = next((derivatives / f"{case}{s}" for s in CENTROID_SUFFIXES
                          if (derivatives / f"{case}{s}").is_file()),
                         None)
        scans.append(VerseScan(case, ct, mask if mask.is_file() else None, centroids))
    if not scans:
        raise ImageIOError(f"{root}: no rawdata/sub-*/..._ct.nii.gz scans found (is this a VerSe download?)")
    return scans


def verse_centroids_to_voxels(entries: list[dict[str, Any]], affine: np.ndarray, shape: tuple[int, ...],
                              source: Path) -> list[tuple[int, np.ndarray]]:
    """(label, voxel index of the mask array) for each centroid of a VerSe centroid list."""
    direction = next((e["direc"] for e in entries if "direc" in e), None)
    if direction is None:
        raise ImageIOError(f"{source}: VerSe centroid file without a 'direc' entry (axis codes)")
    transform = nio.ornt_transform(nio.axcodes2ornt(tuple(direction)), nio.io_orientation(affine)).astype(int)
    out = []
    for entry in entries:
        if "label" not in entry:
            continue
        given = np.array([entry["X"], entry["Y"], entry["Z"]], dtype=np.float64)
        voxel = np.empty(3)
        for axis, (target, flip) in enumerate(transform):
            voxel[target] = given[axis] if flip == 1 else shape[target] - 1 - given[axis]
        out.append((int(entry["label"]), voxel))
    return out


def centroid_records(scan: VerseScan, mask_path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Our ``<case>.json`` records from the official centroids; notes for labels we do not grade or far-off points."""
    mask = load_mask(mask_path)
    entries = read_json(scan.centroids)
    if not isinstance(entries, list):
        raise ImageIOError(f"{scan.centroids}: expected a list of centroid entries")
    notes, records = [], []
    for label, voxel in sorted(verse_centroids_to_voxels(entries, mask.affine, mask.array.shape, scan.centroids)):
        if label not in VERTEBRA_NAMES:
            notes.append(f"centroid label {label} is not a graded VerSe vertebra id; kept")
        index = np.argwhere(mask.array == label)
        if index.size:
            distance = float(np.linalg.norm(voxel_to_world(mask.affine, index.mean(axis=0)[None])[0]
                                            - voxel_to_world(mask.affine, voxel[None])[0]))
            if distance > CENTROID_CHECK_MM:
                notes.append(f"label {label}: official centroid {distance:.0f} mm from the label's voxels")
        records.append({"label": label, "X": round(float(voxel[0]), 3), "Y": round(float(voxel[1]), 3),
                        "Z": round(float(voxel[2]), 3),
                        "world": [round(float(x), 4) for x in voxel_to_world(mask.affine, voxel[None])[0]],
                        "name": VERTEBRA_NAMES.get(label, str(label)), "source": "verse"})
    return records, notes


def _place(source: Path, target: Path, symlink: bool) -> None:
    """Copy (atomically) or symlink ``source`` to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if symlink:
        target.unlink(missing_ok=True)
        os.symlink(source.resolve(), target)
        return
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


def import_scan(scan: VerseScan, out: str | Path, symlink: bool = False) -> ImportResult:
    """Write ``<out>/raw/<case>/{<case>.nii.gz, <case>_msk.nii.gz, <case>.json}``; errors are returned."""
    result = ImportResult(scan.case)
    if scan.mask is None:
        result.error = f"{scan.ct}: no {scan.case}{MASK_SUFFIX} in the derivatives folder"
        return result
    folder = Path(out) / "raw" / scan.case
    try:
        check_same_grid(read_grid(scan.ct), read_grid(scan.mask))
        records, notes = centroid_records(scan, scan.mask) if scan.centroids else ([], [])
        _place(scan.ct, folder / f"{scan.case}.nii.gz", symlink)
        _place(scan.mask, folder / f"{scan.case}_msk.nii.gz", symlink)
        if scan.centroids:
            write_json(folder / f"{scan.case}.json", records)
        else:
            notes.append("no official centroid file; run straighten/location_json_local.py to compute them")
    except (ImageIOError, OSError, ValueError, KeyError) as err:
        result.error = f"{type(err).__name__}: {err}"
        return result
    result.folder, result.notes = folder, notes
    return result
