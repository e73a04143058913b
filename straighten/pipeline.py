"""Straighten one case into per-vertebra crops (docs/design.md, 'Straightened crops'), and run a batch of cases in
parallel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from data.crops import (
    CROP_AXES,
    DEFAULT_CROP_SIZE,
    DEFAULT_SPACING_MM,
    case_crop_keys,
    crop_affine,
    crop_paths,
    remove_crops,
    write_crop,
)
from data.image_io import CaseFiles, ImageIOError, check_same_grid, list_cases, load_ct, load_mask, read_grid
from data.labels import split_key
from straighten.frames import StraightGrid, grid_for_crops, straight_line
from straighten.spine import SpineModel, StraightenError, Vertebra, body_label_map, build_spine_model
from util.parallel import map_items

CT_FILL_HU = -1024.0


@dataclass
class CaseResult:
    """Outcome of one case: written crop keys, skipped vertebrae with reasons, notes, or the error."""

    case: str
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    removed: list[str] = field(default_factory=list)  # obsolete crops of an earlier run, deleted

    @property
    def failed(self) -> bool:
        """True when the case produced no crop because of an error."""
        return self.error is not None


def _crop_rows(grid: StraightGrid, vertebra: Vertebra, crop_depth: int) -> tuple[int, int]:
    """First row (inclusive) and last row (exclusive) of the crop centred on ``vertebra``'s body centroid."""
    first = grid.row_of(vertebra.arc_mm) - crop_depth // 2
    return first, first + crop_depth


def _body_centroids(label_crop: np.ndarray) -> dict[str, list[float]]:
    """Centroid (crop voxel indices) of every label in a crop."""
    index = np.nonzero(label_crop)
    labels = label_crop[index]
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    sums = np.stack([np.bincount(labels, weights=axis)[present] for axis in index], axis=1)
    return {str(int(label)): [round(float(x), 3) for x in total / counts[label]] for label, total in zip(present, sums)}


def _sidecar(case: CaseFiles, model: SpineModel, grid: StraightGrid, vertebra: Vertebra, first_row: int,
             crop_size: tuple[int, int, int], label_crop: np.ndarray, has_ct: bool) -> dict[str, Any]:
    """The crop's sidecar JSON (CONTRACTS keys plus the de-pedicle cut and source geometry)."""
    centre = [n // 2 for n in crop_size]
    body_centroids = _body_centroids(label_crop)
    return {
        "case": case.case,
        "label": vertebra.label,
        "name": vertebra.name,
        "crop_size": list(crop_size),
        "spacing_mm": [grid.spacing_mm] * 3,
        "axes": CROP_AXES,
        "centre_voxel": centre,
        "has_ct": has_ct,
        "source_ct": str(case.ct) if has_ct else None,
        "source_mask": str(case.mask),
        "labels_in_crop": [int(label) for label in body_centroids],
        "body_centroids_crop_vox": body_centroids,
        "body_centroid_ras": [round(float(x), 4) for x in vertebra.body_centroid_ras],
        "depedicle": {"method": vertebra.body_method, "body_depth_mm": round(float(vertebra.body_depth_mm), 3)},
        "centreline": grid.line.to_json(),
        "sampling": {
            "spacing_mm": grid.spacing_mm,
            "crop_row0_arc_mm": round(grid.row0_mm + first_row * grid.spacing_mm, 6),
            "mapping": "RAS = O(s) + (j - centre_voxel[1]) * spacing * posterior(s) + (k - centre_voxel[2]) * spacing "
                       "* left(s), s = crop_row0_arc_mm + i * spacing; see straighten.frames.crop_voxel_to_world",
            "ct_interpolation": "linear", "label_interpolation": "nearest", "ct_fill_hu": CT_FILL_HU,
            "source_shape": list(model.shape),
            "source_affine": np.round(model.affine, 6).tolist(),
        },
    }


def straighten_case(case: CaseFiles, out_dir: str | Path, crop_size: tuple[int, int, int] = DEFAULT_CROP_SIZE,
                    spacing_mm: float = DEFAULT_SPACING_MM, label_scheme: str = "verse") -> CaseResult:
    """Straighten one case and write a CT crop (if the CT exists), a body-label crop and a sidecar per complete
    vertebra.

    Raises :class:`ImageIOError` / :class:`StraightenError` for a bad case; vertebrae cut by the
    border or with too few voxels are skipped and listed in ``CaseResult.skipped``. Files of a
    case are all written or, on an error while writing, all removed. ``label_scheme``: ids of the
    mask (``verse`` or ``totalseg``, see ``data.image_io.load_mask``).
    """
    crop_size = tuple(int(n) for n in crop_size)
    if len(crop_size) != 3 or min(crop_size) < 1:
        raise StraightenError(f"crop size must be three positive integers, got {crop_size}")
    result = CaseResult(case.case)
    if case.mask is None:
        raise StraightenError(f"{case.folder}: CT without a vertebra mask (expected {case.case}_msk.nii.gz)")
    if case.ct is not None:
        check_same_grid(read_grid(case.ct), read_grid(case.mask))
    mask = load_mask(case.mask, label_scheme)
    model = build_spine_model(mask)
    result.notes.extend(model.notes)
    for vertebra in model.vertebrae:
        if not vertebra.usable:
            result.skipped[split_key(case.case, vertebra.label)] = (f"{vertebra.name} {vertebra.status}: "
                                                                    f"{vertebra.reason}")
    grid = grid_for_crops(straight_line(model), crop_size, spacing_mm)
    straight_labels = grid.sample(body_label_map(model), model.affine, order=0, fill=0, dtype=np.uint8)
    # the CT is loaded after the label arrays are freed (peak memory); its grid was checked above
    del mask
    straight_ct = None
    if case.ct is None:
        result.notes.append("mask only (no CT): label crops only")
    else:
        ct = load_ct(case.ct)
        straight_ct = grid.sample(ct.array, model.affine, order=1, fill=CT_FILL_HU, dtype=np.float32)
        del ct
    _write_case_crops(case, out_dir, model, grid, crop_size, straight_labels, straight_ct, result)
    return result


def _write_case_crops(case: CaseFiles, out_dir: str | Path, model: SpineModel, grid: StraightGrid,
                      crop_size: tuple[int, int, int], straight_labels: np.ndarray,
                      straight_ct: np.ndarray | None, result: CaseResult) -> None:
    """Write every usable vertebra's crop; on any error remove this case's files written so far."""
    written: list[Path] = []
    try:
        for vertebra in model.usable:
            first, last = _crop_rows(grid, vertebra, crop_size[0])
            label_crop = straight_labels[first:last]
            if not np.any(label_crop == vertebra.label):
                raise StraightenError(f"{case.mask}: {vertebra.name} is empty after straightening")
            key = split_key(case.case, vertebra.label)
            sidecar = _sidecar(case, model, grid, vertebra, first, crop_size, label_crop, straight_ct is not None)
            centre_ras = np.asarray(vertebra.body_centroid_ras)
            affine = crop_affine(grid.spacing_mm, centre_ras, crop_size)
            paths = crop_paths(out_dir, key)
            written.extend([paths.ct, paths.label, paths.sidecar])
            # Fortran order is NIfTI's on-disk order: nibabel then writes without transposing
            ct_crop = None if straight_ct is None else np.asfortranarray(straight_ct[first:last])
            if ct_crop is None:
                paths.ct.unlink(missing_ok=True)  # a CT crop of an earlier run with a CT would be stale
            write_crop(out_dir, key, ct_crop, np.asfortranarray(label_crop), affine, sidecar)
            result.written.append(key)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        result.written.clear()
        raise


def remove_obsolete_crops(out_dir: str | Path, result: CaseResult) -> None:
    """Delete the case's crops that this run did not write (a vertebra relabelled, skipped, or the case
    failed), so that later steps never read crops of an earlier input; lists them in ``result.removed``."""
    obsolete = sorted(set(case_crop_keys(out_dir, result.case)) - set(result.written))
    remove_crops(out_dir, obsolete)
    result.removed = obsolete


def _run_one(case: CaseFiles, out_dir: Path, crop_size: tuple[int, int, int], spacing_mm: float,
             label_scheme: str = "verse") -> CaseResult:
    """Straighten one case, turning an expected failure into ``CaseResult.error``; either way the
    case is left with exactly the crops of its current inputs."""
    try:
        result = straighten_case(case, out_dir, crop_size, spacing_mm, label_scheme)
    except Exception as err:  # one bad case must not stop the batch; the report names it
        result = CaseResult(case.case, error=f"{type(err).__name__}: {err}")
    remove_obsolete_crops(out_dir, result)
    return result


def straighten_root(root: str | Path, out_dir: str | Path | None = None,
                    crop_size: tuple[int, int, int] = DEFAULT_CROP_SIZE, spacing_mm: float = DEFAULT_SPACING_MM,
                    workers: int = 1, cases: list[str] | None = None,
                    progress: Callable[[int], Any] | None = None, label_scheme: str = "verse") -> list[CaseResult]:
    """Straighten every case under ``<root>/raw/`` (or the named ``cases``) into ``out_dir``.

    ``workers`` > 1 runs cases in parallel processes. ``progress(total)`` may return a
    tqdm-like object (``update``/``close``). Returns one result per case, in case order.
    """
    out = Path(out_dir) if out_dir is not None else Path(root) / "straightened"
    all_cases = list_cases(root)
    if cases:
        unknown = sorted(set(cases) - {c.case for c in all_cases})
        if unknown:
            raise ImageIOError(f"{Path(root) / 'raw'}: no case folder named {', '.join(unknown)}")
        all_cases = [c for c in all_cases if c.case in set(cases)]
    bar = progress(len(all_cases)) if progress is not None else None
    run = partial(_run_one, out_dir=out, crop_size=crop_size, spacing_mm=spacing_mm, label_scheme=label_scheme)
    results = []
    for outcome in map_items(run, all_cases, workers):  # a crashed worker process fails its cases, not the batch
        results.append(outcome.value if outcome.ok else CaseResult(outcome.item.case, error=outcome.error))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results
