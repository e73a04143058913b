"""The straightened coordinate system and resampling along it.

A straightened point has coordinates ``(s, u, w)`` in mm: ``s`` is the position along the centre
line (0 at the first complete vertebra's body centroid, increasing caudally), ``u`` the offset
along the local ``posterior`` axis and ``w`` along the local ``left`` axis. Its RAS position is

    X(s, u, w) = O(s) + u * P(s) + w * L(s)

The centre line is *piecewise rigid*: across each vertebral body (its cranial-caudal extent plus a
margin) ``O`` runs straight along that vertebra's tangent (the tangent of the smooth spline
through the body centroids, at its body centroid) and the frame is constant, so a body is
resampled by a rigid motion and its heights, depth and shape are kept exactly. Between two
bodies (the disc) positions and tangents blend smoothly from one vertebra to the next, so the
curvature of the spine is taken up by the discs, as in the real spine. Beyond the first and the
last vertebra the line continues straight. The frame's ``posterior`` axis stays in the
sagittal plane (:func:`straighten.spine.sagittal_frames`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from straighten.spine import SpineModel, StraightenError, sagittal_frames

BODY_MARGIN_MM = 1.0
MIN_BLEND_MM = 2.0


@dataclass
class StraightLine:
    """Piecewise-rigid centre line: per complete vertebra its arc position, body centroid, tangent and rigid zone
    (mm)."""

    labels: list[int]
    arc_mm: np.ndarray          # (K,) body-centroid position along the line
    centroids_ras: np.ndarray   # (K, 3)
    tangents: np.ndarray        # (K, 3) unit, caudal
    zone_start_mm: np.ndarray   # (K,) rigid zone [start, end] in arc mm
    zone_end_mm: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable description (the sidecar's ``centreline``)."""
        return {
            "model": "piecewise_rigid",
            "frame": ("tangent caudal; posterior in the sagittal plane (RAS x = 0 component); "
                      "left = tangent x posterior"),
            "blend": "smoothstep between rigid zones",
            "vertebrae": [
                {"label": int(label), "arc_mm": round(float(arc), 4),
                 "body_centroid_ras": [round(float(x), 4) for x in centroid],
                 "tangent_ras": [round(float(x), 6) for x in tangent],
                 "rigid_zone_mm": [round(float(a), 4), round(float(b), 4)]}
                for label, arc, centroid, tangent, a, b in zip(self.labels, self.arc_mm, self.centroids_ras,
                                                               self.tangents, self.zone_start_mm, self.zone_end_mm)
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StraightLine:
        """Inverse of :meth:`to_json`."""
        rows = data["vertebrae"]
        return cls(
            labels=[int(r["label"]) for r in rows],
            arc_mm=np.array([r["arc_mm"] for r in rows], dtype=np.float64),
            centroids_ras=np.array([r["body_centroid_ras"] for r in rows], dtype=np.float64).reshape(-1, 3),
            tangents=np.array([r["tangent_ras"] for r in rows], dtype=np.float64).reshape(-1, 3),
            zone_start_mm=np.array([r["rigid_zone_mm"][0] for r in rows], dtype=np.float64),
            zone_end_mm=np.array([r["rigid_zone_mm"][1] for r in rows], dtype=np.float64),
        )

    def frames_at(self, s_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Origins ``O(s)`` and unit ``(tangent, posterior, left)`` at arc positions ``s_mm`` (N,), each (N, 3)."""
        s = np.asarray(s_mm, dtype=np.float64).ravel()
        count = len(self.labels)
        k = np.clip(np.searchsorted(self.zone_start_mm, s, side="right") - 1, 0, count - 1)
        k_next = np.minimum(k + 1, count - 1)
        gap = self.zone_start_mm[k_next] - self.zone_end_mm[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(k_next > k, (s - self.zone_end_mm[k]) / gap, 0.0)
        x = np.clip(x, 0.0, 1.0)
        weight = (x * x * (3.0 - 2.0 * x))[:, None]
        rigid_here = self.centroids_ras[k] + (s - self.arc_mm[k])[:, None] * self.tangents[k]
        rigid_next = self.centroids_ras[k_next] + (s - self.arc_mm[k_next])[:, None] * self.tangents[k_next]
        origins = (1.0 - weight) * rigid_here + weight * rigid_next
        tangents, posterior, left = sagittal_frames((1.0 - weight) * self.tangents[k] + weight * self.tangents[k_next])
        return origins, tangents, posterior, left


def straight_line(model: SpineModel, margin_mm: float = BODY_MARGIN_MM,
                  min_blend_mm: float = MIN_BLEND_MM) -> StraightLine:
    """The piecewise-rigid centre line of a spine model (its complete vertebrae, cranial -> caudal)."""
    usable = model.usable
    arc = np.array([v.arc_mm for v in usable], dtype=np.float64)
    start = np.array([v.arc_mm - v.body_extent_mm[0] - margin_mm for v in usable])
    end = np.array([v.arc_mm + v.body_extent_mm[1] + margin_mm for v in usable])
    for k in range(len(usable) - 1):
        if start[k + 1] - end[k] < min_blend_mm:
            middle = np.clip(0.5 * (end[k] + start[k + 1]), arc[k] + 0.5 * min_blend_mm,
                             arc[k + 1] - 0.5 * min_blend_mm)
            end[k], start[k + 1] = middle - 0.5 * min_blend_mm, middle + 0.5 * min_blend_mm
    return StraightLine(
        labels=[v.label for v in usable], arc_mm=arc,
        centroids_ras=np.array([v.frame.origin for v in usable]),
        tangents=np.array([v.frame.tangent for v in usable]),
        zone_start_mm=start, zone_end_mm=end,
    )


@dataclass
class StraightGrid:
    """A regular straightened grid: rows at ``s = row0_mm + i * spacing``, in-plane
    ``u, w = (j - centre) * spacing``."""

    line: StraightLine
    row0_mm: float
    rows: int
    plane_shape: tuple[int, int]
    spacing_mm: float

    @property
    def plane_centre(self) -> tuple[int, int]:
        """In-plane voxel on the centre line (``u = w = 0``)."""
        return self.plane_shape[0] // 2, self.plane_shape[1] // 2

    def row_of(self, s_mm: float) -> int:
        """Nearest row index of arc position ``s_mm``."""
        return int(np.rint((s_mm - self.row0_mm) / self.spacing_mm))

    def voxel_coordinates(self, rows: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Continuous voxel indices, in the scan of ``affine``, of every grid voxel of ``rows``:
        (3, len(rows), D1, D2)."""
        inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
        s = self.row0_mm + np.asarray(rows, dtype=np.float64) * self.spacing_mm
        origins, _, posterior, left = self.line.frames_at(s)
        origins = origins @ inverse[:3, :3].T + inverse[:3, 3]
        posterior, left = posterior @ inverse[:3, :3].T, left @ inverse[:3, :3].T
        c1, c2 = self.plane_centre
        u = ((np.arange(self.plane_shape[0]) - c1) * self.spacing_mm)[None, :, None]
        w = ((np.arange(self.plane_shape[1]) - c2) * self.spacing_mm)[None, None, :]
        coordinates = np.empty((3, len(s)) + tuple(self.plane_shape))
        for axis in range(3):
            coordinates[axis] = (origins[:, axis, None, None] + u * posterior[:, axis, None, None]
                                 + w * left[:, axis, None, None])
        return coordinates

    def sample(self, array: np.ndarray, affine: np.ndarray, order: int, fill: float, dtype: np.dtype,
               chunk_rows: int = 32) -> np.ndarray:
        """Resample ``array`` (voxel grid of ``affine``) onto this grid: (rows, D1, D2) of ``dtype``.

        ``order`` 1 = linear (CT, ``scipy.ndimage.map_coordinates``), 0 = nearest (labels); points
        outside the scan get ``fill``. Only points that can touch the scan are interpolated, and
        rows go in chunks so the coordinate arrays stay small.
        """
        out = np.empty((self.rows,) + tuple(self.plane_shape), dtype=dtype)
        upper = np.array(array.shape, dtype=np.float64)[:, None]
        for first in range(0, self.rows, chunk_rows):
            rows = np.arange(first, min(first + chunk_rows, self.rows))
            block = out[rows[0]:rows[-1] + 1]
            block.fill(fill)
            coordinates = self.voxel_coordinates(rows, affine).reshape(3, -1)
            if order == 0:
                index = np.rint(coordinates).astype(np.intp)
                inside = np.all((index >= 0) & (index < upper.astype(np.intp)), axis=0)
                block.reshape(-1)[inside] = array[index[0, inside], index[1, inside], index[2, inside]]
            else:
                inside = np.all((coordinates > -1.0) & (coordinates < upper), axis=0)
                block.reshape(-1)[inside] = ndimage.map_coordinates(
                    array, coordinates[:, inside], order=order, mode="constant", cval=fill, prefilter=False)
        return out


def grid_for_crops(line: StraightLine, crop_size: tuple[int, int, int], spacing_mm: float) -> StraightGrid:
    """A grid long enough that every complete vertebra's crop (centred on its body centroid) fits in it."""
    if spacing_mm <= 0:
        raise StraightenError(f"spacing must be positive, got {spacing_mm}")
    first, last = float(line.arc_mm.min()), float(line.arc_mm.max())
    before = (crop_size[0] // 2 + 1) * spacing_mm
    after = (crop_size[0] - crop_size[0] // 2 + 1) * spacing_mm
    row0 = first - before
    rows = int(np.ceil((last + after - row0) / spacing_mm)) + 1
    return StraightGrid(line, row0, rows, (int(crop_size[1]), int(crop_size[2])), float(spacing_mm))


def crop_voxel_to_world(sidecar: dict[str, Any], ijk: np.ndarray) -> np.ndarray:
    """Map crop voxel indices (N, 3), axes (S->I, A->P, R->L), back to RAS mm of the source scan."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    line = StraightLine.from_json(sidecar["centreline"])
    sampling = sidecar["sampling"]
    spacing = float(sampling["spacing_mm"])
    s = float(sampling["crop_row0_arc_mm"]) + ijk[:, 0] * spacing
    origins, _, posterior, left = line.frames_at(s)
    centre = np.asarray(sidecar["centre_voxel"], dtype=np.float64)
    u = (ijk[:, 1] - centre[1]) * spacing
    w = (ijk[:, 2] - centre[2]) * spacing
    return origins + u[:, None] * posterior + w[:, None] * left


def world_to_crop_voxel(sidecar: dict[str, Any], xyz: np.ndarray, iterations: int = 100,
                        tolerance_mm: float = 1e-7) -> np.ndarray:
    """Inverse of :func:`crop_voxel_to_world`: RAS mm points (N, 3) of the source scan -> crop voxel indices (N, 3).

    The arc position ``s`` of a point solves ``(X - O(s)) . T(s) = 0`` (the point lies in the plane
    of row ``s``). It starts from the rigid frame of the nearest body centroid (exact inside a
    vertebra's rigid zone) and is refined by Newton steps (until the point is within ``tolerance_mm``
    of the row's plane), which matter only between bodies, where the frame blends. Points far from the
    spine where the planes of different rows cross (beyond the centre line's radius of curvature) have no
    unique answer; crops never reach that far.
    """
    xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
    line = StraightLine.from_json(sidecar["centreline"])
    sampling = sidecar["sampling"]
    spacing = float(sampling["spacing_mm"])
    centre = np.asarray(sidecar["centre_voxel"], dtype=np.float64)
    nearest = np.argmin(((xyz[:, None, :] - line.centroids_ras[None]) ** 2).sum(axis=2), axis=1)
    s = line.arc_mm[nearest] + np.einsum("ij,ij->i", xyz - line.centroids_ras[nearest], line.tangents[nearest])

    def plane_offset(s_mm: np.ndarray, points: np.ndarray) -> np.ndarray:
        origins, tangents, _, _ = line.frames_at(s_mm)
        return np.einsum("ij,ij->i", points - origins, tangents)

    step = 1e-4
    active = np.arange(len(s))
    for _ in range(iterations):
        offset = plane_offset(s[active], xyz[active])
        converged = np.abs(offset) < tolerance_mm
        active, offset = active[~converged], offset[~converged]
        if active.size == 0:
            break
        slope = (plane_offset(s[active] + step, xyz[active]) - offset) / step
        s[active] -= offset / np.where(slope < -0.1, slope, -1.0)
    origins, _, posterior, left = line.frames_at(s)
    offsets = xyz - origins
    return np.stack([(s - float(sampling["crop_row0_arc_mm"])) / spacing,
                     np.einsum("ij,ij->i", offsets, posterior) / spacing + centre[1],
                     np.einsum("ij,ij->i", offsets, left) / spacing + centre[2]], axis=1)
