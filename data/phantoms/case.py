"""Generating and writing one phantom case: random draws, working grid, painting, PSF and noise, orientation.

Every voxel centre of the RAS working grid is mapped into the vertebra frames and tested against
the models, so the mask is the anatomy sampled at voxel centres. The volume is assembled in RAS
axis order and finally transposed/flipped into the requested orientation; the same seed and the
same spacing per RAS axis therefore give the same anatomy in every orientation. The image gets a
0.5-voxel Gaussian PSF and Gaussian noise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from data.image_io import save_nifti
from data.phantoms.anatomy import Vertebra, draw_vertebrae, vertebra_corners
from data.phantoms.geometry import Grid, ras_spacing_and_shape
from data.phantoms.layout import Body, draw_body, draw_centre_line, place_vertebrae
from data.phantoms.paint import (
    label_stats,
    paint_body,
    paint_canal,
    paint_disc,
    paint_posterior,
    paint_ribs,
    texture_field,
)
from data.phantoms.soft_tissue import paint_background
from data.phantoms.spec import ORIENTATIONS, CaseSpec, PhantomCase, check_spec
from data.phantoms.truth import GENERATOR_VERSION, HEIGHT_DEFINITION, is_truncated, vertebra_truth
from evaluation.genant import genant_grade
from util.fileio import write_json


def draw_orientation_and_spacing(rng: np.random.Generator) -> tuple[str, tuple[float, float, float]]:
    """A random orientation and spacing per output array axis (in-plane 0.7-1.0 mm, slice 1-3 mm)."""
    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    in_plane = round(float(rng.uniform(0.7, 1.0)), 3)
    slice_mm = round(float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0])), 3)
    return orientation, (in_plane, in_plane, slice_mm)


def _anatomy_box(vertebrae: list[Vertebra], body: Body, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """RAS box (mm) around the vertebrae (posterior elements included), the back skin and some air."""
    points = np.concatenate([vertebra_corners(v) for v in vertebrae])
    low, high = points.min(axis=0) - margin, points.max(axis=0) + margin
    back = body.torso_centre[1] - body.torso_radii[1] - 10.0  # keep some air behind the back
    low[1] = min(low[1], back)
    high[1] = max(high[1], max(v.frame.origin[1] + 0.5 * v.depth for v in vertebrae) + 40.0)
    return low, high


def _working_grid(
    spec: CaseSpec, orientation: str, spacing: Sequence[float], vertebrae: list[Vertebra], body: Body
) -> Grid:
    """The RAS-ordered grid: fitted to the anatomy, or of the given shape centred on the torso."""
    ras_spacing, ras_shape = ras_spacing_and_shape(orientation, spacing, spec.shape)
    low, high = _anatomy_box(vertebrae, body, spec.margin_mm)
    if ras_shape is None:
        ras_shape = np.ceil((high - low) / ras_spacing).astype(int) + 1
        origin = low
    else:
        centre = np.array([body.torso_centre[0], body.torso_centre[1], 0.5 * (low[2] + high[2])])
        origin = centre - 0.5 * (ras_shape - 1) * ras_spacing
    return Grid(np.asarray(origin, dtype=np.float64), ras_spacing, tuple(int(n) for n in ras_shape))


def _finish_ct(hu: np.ndarray, noise_hu: float, rng: np.random.Generator, chunk: int = 16) -> np.ndarray:
    """Blur (scanner PSF, sigma 0.5 voxel), add Gaussian noise and round to int16 HU; in place, by chunks."""
    for axis in range(3):
        ndimage.gaussian_filter1d(hu, 0.5, axis=axis, output=hu, mode="nearest", truncate=2.0)
    out = np.empty(hu.shape, dtype=np.int16)
    for start in range(0, hu.shape[2], chunk):
        stop = min(start + chunk, hu.shape[2])
        block = hu[:, :, start:stop]
        block_noise = rng.standard_normal(block.shape, dtype=np.float32)
        block_noise *= np.float32(noise_hu)
        block += block_noise
        np.rint(block, out=block)
        np.clip(block, -1024, 3071, out=block)
        out[:, :, start:stop] = block
    return out


def generate_case(spec: CaseSpec) -> PhantomCase:
    """Build one phantom case (CT, mask, affine, truth) from its specification; deterministic for ``spec``."""
    check_spec(spec)
    anatomy_seq, texture_seq, noise_seq = np.random.SeedSequence(spec.seed).spawn(3)
    rng = np.random.default_rng(anatomy_seq)
    vertebrae = draw_vertebrae(spec, rng)
    line = draw_centre_line(vertebrae, rng)
    place_vertebrae(vertebrae, line, rng)
    body = draw_body(vertebrae, line, rng)
    drawn_orientation, drawn_spacing = draw_orientation_and_spacing(rng)
    drawn_noise = float(rng.uniform(8.0, 20.0))
    orientation = spec.orientation or drawn_orientation
    spacing = tuple(float(s) for s in (spec.spacing_mm or drawn_spacing))
    noise_hu = drawn_noise if spec.noise_hu is None else float(spec.noise_hu)

    grid = _working_grid(spec, orientation, spacing, vertebrae, body)
    hu = np.empty(grid.shape, dtype=np.float32)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    field = texture_field(np.random.default_rng(texture_seq))
    paint_background(body, grid, hu)
    for v in vertebrae:
        paint_canal(v, grid, hu)
        paint_ribs(v, body, grid, hu, field)
    for upper, lower in zip(vertebrae[:-1], vertebrae[1:]):
        paint_disc(upper, lower, grid, hu, field)
    for v in vertebrae:
        paint_posterior(v, grid, hu, mask, field)
    body_stats = {v.label: paint_body(v, grid, hu, mask, field) for v in vertebrae}
    whole_stats = {v.label: label_stats(v, grid, mask) for v in vertebrae}
    ct = _finish_ct(hu, noise_hu, np.random.default_rng(noise_seq))
    del hu

    ornt = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), nio.axcodes2ornt(tuple(orientation)))
    out_ct = np.ascontiguousarray(nio.apply_orientation(ct, ornt))
    out_mask = np.ascontiguousarray(nio.apply_orientation(mask, ornt))
    out_affine = grid.affine @ nio.inv_ornt_aff(ornt, grid.shape)

    fractured = {label for label, f in spec.fractures.items() if genant_grade(f.loss_ratio) > 0}
    records = []
    for index, v in enumerate(vertebrae):
        above = vertebrae[index - 1].label if index else None
        below = vertebrae[index + 1].label if index + 1 < len(vertebrae) else None
        records.append(
            vertebra_truth(v, body_stats[v.label], whole_stats[v.label], grid, out_affine, fractured, (above, below),
                          is_truncated(v, grid))
        )
    z_top = grid.origin[2] + (grid.shape[2] - 1) * grid.spacing[2]
    inside = (line.points[:, 2] >= grid.origin[2]) & (line.points[:, 2] <= z_top)
    centre_line = line.points[inside][::8]  # every 2 mm along t
    truth = {
        "case": spec.case,
        "generator": GENERATOR_VERSION,
        "seed": int(spec.seed),
        "orientation": orientation,
        "spacing_mm": [round(s, 6) for s in spacing],
        "shape": [int(n) for n in out_ct.shape],
        "affine": [[round(float(c), 6) for c in row] for row in out_affine],
        "noise_hu": round(noise_hu, 4),
        "height_definition": HEIGHT_DEFINITION,
        "centreline_ras_mm": [[round(float(c), 3) for c in p] for p in centre_line],
        "vertebrae": records,
    }
    return PhantomCase(spec.case, out_ct, out_mask, out_affine, truth)


def write_case(case: PhantomCase, root: str | Path) -> Path:
    """Write ``<root>/raw/<case>/{<case>.nii.gz, <case>_msk.nii.gz, <case>_truth.json}`` as one atomic folder swap."""
    final = Path(root) / "raw" / case.case
    staging = Path(root) / f".staging-{case.case}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        save_nifti(case.ct, case.affine, staging / f"{case.case}.nii.gz", dtype=np.int16)
        save_nifti(case.mask, case.affine, staging / f"{case.case}_msk.nii.gz", dtype=np.uint8)
        write_json(staging / f"{case.case}_truth.json", case.truth)
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


