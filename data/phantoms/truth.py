"""The phantom truth file's per-vertebra entries (docs/design.md, 'Phantom truth').

Keys beyond that section, per vertebra: ``loss_by_region``, ``frame`` (origin and unit axes, RAS),
``height_points_ras_mm`` (mid-height points where heights are defined), ``body_depth_mm``,
``body_width_mm``, ``disc_below_mm``, ``body_voxels``, ``vertebra_centroid_voxel`` /
``vertebra_centroid_ras_mm`` / ``vertebra_voxels`` (all voxels of the label), ``adjacent_fracture``,
``truncated`` (part outside the volume) and ``height_resolution_mm`` = sum_k |superior_k| *
spacing_k, the voxel's extent along the spine axis: a height measured by counting mask voxels can
be off by up to this much (sub-voxel agreement needs averaging over neighbouring columns).
``centroid_*`` is the centroid of the body voxels (post-fracture). The per-case keys
(``affine``, ``shape``, ``seed``, ``noise_hu``, ``height_definition``, ``centreline_ras_mm``) are
assembled by ``data.phantoms.case.generate_case``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data.image_io import voxel_to_world, world_to_voxel
from data.labels import vertebra_name
from data.phantoms.anatomy import Vertebra, region_centres_mm, regional_heights, vertebra_corners
from data.phantoms.geometry import Grid
from data.phantoms.paint import VoxelStats
from evaluation.genant import ANATOMICAL_REGIONS, GENANT_RULE, genant_grade

GENERATOR_VERSION = "healthivert-phantom-1"
HEIGHT_DEFINITION = (
    "Body height in mm along frame.superior, from the lower to the upper endplate surface (endplate concavity "
    "included), on the mid-sagittal plane of the vertebra's frame (left = 0), at the centres of the posterior, "
    "middle and anterior thirds of the body's antero-posterior extent [-D/2, D/2] (anterior coordinate -D/3, 0, "
    "+D/3 mm from frame.origin_ras_mm, D = body_depth_mm). pre = healthy body, post = body as drawn. "
    f"loss_ratio = max over regions of 1 - post/pre; grade by Genant: {GENANT_RULE}."
)


def vertebra_truth(
    v: Vertebra, body: VoxelStats, whole: VoxelStats, grid: Grid, out_affine: np.ndarray,
    fractured_labels: set[int], neighbours: tuple[int | None, int | None], truncated: bool,
) -> dict[str, Any]:
    """The truth entry of one vertebra (see the module docstring for the height definition)."""
    pre, post = regional_heights(v, fractured=False), regional_heights(v, fractured=True)
    losses = {r: 1.0 - post[r] / pre[r] for r in ANATOMICAL_REGIONS}
    loss_ratio = max(losses.values())

    def centroid(stats: VoxelStats) -> tuple[list[float] | None, list[float] | None]:
        if stats.mean_index is None:
            return None, None
        world = voxel_to_world(grid.affine, stats.mean_index[None])
        voxel = world_to_voxel(out_affine, world)[0]
        return [round(float(c), 3) for c in voxel], [round(float(c), 3) for c in world[0]]

    body_voxel, body_world = centroid(body)
    whole_voxel, whole_world = centroid(whole)
    centres = region_centres_mm(v.depth)
    points = {r: v.frame.to_world(np.array([[0.0, centres[r], 0.0]]))[0] for r in ANATOMICAL_REGIONS}
    return {
        "label": v.label,
        "name": vertebra_name(v.label),
        "grade": genant_grade(loss_ratio),
        "morphology": v.fracture.morphology if v.fracture else "none",
        "loss_ratio": round(loss_ratio, 6),
        "loss_by_region": {r: round(losses[r], 6) for r in ANATOMICAL_REGIONS},
        "height_pre_mm": {r: round(pre[r], 4) for r in ANATOMICAL_REGIONS},
        "height_post_mm": {r: round(post[r], 4) for r in ANATOMICAL_REGIONS},
        "centroid_voxel": body_voxel,
        "centroid_ras_mm": body_world,
        "body_voxels": body.count,
        "vertebra_centroid_voxel": whole_voxel,
        "vertebra_centroid_ras_mm": whole_world,
        "vertebra_voxels": whole.count,
        "body_depth_mm": round(v.depth, 4),
        "body_width_mm": round(v.width, 4),
        "disc_below_mm": round(v.disc_below, 4),
        "frame": {
            "origin_ras_mm": [round(float(c), 4) for c in v.frame.origin],
            "superior": [round(float(c), 6) for c in v.frame.rotation[0]],
            "anterior": [round(float(c), 6) for c in v.frame.rotation[1]],
            "left": [round(float(c), 6) for c in v.frame.rotation[2]],
        },
        "height_points_ras_mm": {r: [round(float(c), 4) for c in points[r]] for r in ANATOMICAL_REGIONS},
        "height_resolution_mm": round(float(np.abs(v.frame.rotation[0]) @ grid.spacing), 4),
        "adjacent_fracture": any(n in fractured_labels for n in neighbours if n is not None),
        "truncated": truncated,
    }


def is_truncated(v: Vertebra, grid: Grid) -> bool:
    """Whether part of the vertebra's bounding boxes lies outside the grid."""
    world = vertebra_corners(v)
    grid_high = grid.origin + (np.array(grid.shape) - 1) * grid.spacing
    return bool(np.any(world.min(axis=0) < grid.origin) or np.any(world.max(axis=0) > grid_high))


