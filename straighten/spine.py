"""Vertebra geometry from a label mask: centroids, border flags, vertebral bodies, centre line.

Everything is computed in RAS millimetres through the mask's affine, so the scan's orientation
and (anisotropic) spacing never matter. The local frame of a vertebra is

- ``tangent``: unit vector along the spine's centre line, pointing caudally (superior -> inferior);
- ``posterior``: perpendicular to the tangent *inside the sagittal plane* (RAS x = const),
  pointing backwards (the reference implementation's frame; Frenet frames break on straight
  segments);
- ``left``: ``tangent x posterior`` (points to the patient's left).

De-pedicle: in a thin mid-sagittal slab of one vertebra's label, the body and the posterior arch
are separated by the empty spinal canal. The posterior wall of the body is the end of the first
(anterior-most) run of label voxels along ``posterior``; every voxel of the label behind the
plane through that wall (perpendicular to ``posterior``) is arch (pedicles, laminae, spinous and
transverse processes) and is removed. This works on real masks where body and arch are one label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline

from data.image_io import Volume, voxel_to_world
from data.labels import VERTEBRA_NAMES, spine_rank, vertebra_name
from data.morphology import largest_component, remove_small_components

MIN_VOLUME_MM3 = 1000.0
CUT_VOLUME_FRACTION = 0.7
MIDLINE_HALF_WIDTH_MM = 3.0
MIN_CANAL_GAP_MM = 3.0
MIN_BODY_DEPTH_MM = 8.0
MAX_BODY_ONLY_DEPTH_MM = 55.0
DEFAULT_BODY_DEPTH_FRACTION = 0.45
MAX_BODY_TILT_DEG = 12.0
MIN_PART_FRACTION = 0.1
ALIGN_MAX_POINTS = 6000

STATUS_OK = "ok"
STATUS_CUT = "cut_by_border"
STATUS_TOO_SMALL = "too_small"


class StraightenError(ValueError):
    """A case that cannot be straightened; the message names the file and the problem."""


@dataclass
class Frame:
    """Orthonormal local frame (RAS unit vectors) at ``origin`` (RAS mm)."""

    origin: np.ndarray
    tangent: np.ndarray
    posterior: np.ndarray
    left: np.ndarray


@dataclass
class Vertebra:
    """One labelled vertebra of a mask; positions in RAS mm unless the name says voxel."""

    label: int
    voxel_index: np.ndarray = field(repr=False)  # (N, 3) int array indices of the label's voxels
    volume_mm3: float
    centroid_voxel: np.ndarray
    centroid_ras: np.ndarray
    touches_border: bool
    status: str = STATUS_OK
    reason: str = ""
    body_voxel_index: np.ndarray | None = field(default=None, repr=False)
    body_centroid_ras: np.ndarray | None = None
    body_method: str = ""
    frame: Frame | None = None
    posterior_wall_mm: float | None = None  # cut plane: offset along frame.posterior from frame.origin
    body_depth_mm: float | None = None
    body_extent_mm: tuple[float, float] | None = None  # (cranial, caudal) extent from the body centroid
    arc_mm: float | None = None  # position of the body centroid along the centre line

    @property
    def name(self) -> str:
        """Anatomical name (``"L1"``)."""
        return vertebra_name(self.label)

    @property
    def voxel_count(self) -> int:
        """Number of label voxels."""
        return int(len(self.voxel_index))

    @property
    def usable(self) -> bool:
        """Complete vertebra (not cut by the border, not too small): gets a crop."""
        return self.status == STATUS_OK


@dataclass
class SpineModel:
    """All vertebrae of one mask, ordered cranial -> caudal, with the fitted centre line."""

    vertebrae: list[Vertebra]
    shape: tuple[int, int, int]
    affine: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> list[Vertebra]:
        """Complete vertebrae (ordered cranial -> caudal); the centre line passes their bodies."""
        return [v for v in self.vertebrae if v.usable]

    def by_label(self, label: int) -> Vertebra:
        """The vertebra with VerSe id ``label``."""
        for vertebra in self.vertebrae:
            if vertebra.label == label:
                return vertebra
        raise KeyError(label)


def sagittal_frames(tangents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames with the second axis in the sagittal plane for RAS tangents (N, 3).

    Returns unit ``(tangent, posterior, left)``, each (N, 3): ``posterior`` is perpendicular to
    the tangent with zero RAS x component and points to -y (backwards); ``left = tangent x posterior``.
    """
    tangents = np.atleast_2d(np.asarray(tangents, dtype=np.float64))
    tangents = tangents / np.linalg.norm(tangents, axis=1, keepdims=True)
    posterior = np.stack([np.zeros(len(tangents)), tangents[:, 2], -tangents[:, 1]], axis=1)
    norms = np.linalg.norm(posterior, axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        raise StraightenError("the spine's centre line runs left-right; no sagittal frame exists")
    posterior = posterior / norms
    posterior *= np.where(posterior[:, 1:2] > 0, -1.0, 1.0)
    left = np.cross(tangents, posterior)
    return tangents, posterior, left


def _vertebra_voxels(mask: np.ndarray) -> dict[int, np.ndarray]:
    """Voxel indices (N, 3) of every non-zero label, found through per-label bounding boxes."""
    voxels: dict[int, np.ndarray] = {}
    for index, box in enumerate(ndimage.find_objects(mask)):
        if box is None:
            continue
        label = index + 1
        local = np.argwhere(mask[box] == label)
        voxels[label] = (local + np.array([s.start for s in box])).astype(np.int32)
    return voxels


def _flag_cut_vertebrae(vertebrae: list[Vertebra], min_volume_mm3: float, cut_fraction: float) -> None:
    """Mark vertebrae with too few voxels, and border-touching ones much smaller than their neighbours."""
    for vertebra in vertebrae:
        if vertebra.volume_mm3 < min_volume_mm3:
            vertebra.status = STATUS_TOO_SMALL
            vertebra.reason = (f"{vertebra.voxel_count} voxels "
                               f"({vertebra.volume_mm3:.0f} mm3 < {min_volume_mm3:.0f} mm3)")
    sized = [v for v in vertebrae if v.status != STATUS_TOO_SMALL]
    for vertebra in sized:
        if not vertebra.touches_border:
            continue
        others = sorted((v for v in sized if v is not vertebra),
                        key=lambda v: abs(spine_rank(v.label) - spine_rank(vertebra.label)))[:2]
        if not others:
            continue
        reference = float(np.median([v.volume_mm3 for v in others]))
        if vertebra.volume_mm3 < cut_fraction * reference:
            vertebra.status = STATUS_CUT
            vertebra.reason = (f"touches the volume border and has {vertebra.volume_mm3:.0f} mm3, "
                               f"{vertebra.volume_mm3 / reference:.0%} of its neighbours' {reference:.0f} mm3")


def measure_vertebrae(mask: Volume, min_volume_mm3: float = MIN_VOLUME_MM3,
                      cut_fraction: float = CUT_VOLUME_FRACTION) -> tuple[list[Vertebra], list[str]]:
    """Whole-vertebra centroids (voxel and RAS mm), volumes and border flags, cranial -> caudal.

    A vertebra is ``too_small`` below ``min_volume_mm3``; it is ``cut_by_border`` when it touches
    the volume border and its volume is below ``cut_fraction`` of the median of its two nearest
    neighbours. Labels that are not VerSe vertebra ids are ignored with a note.
    """
    array = np.asarray(mask.array)
    voxel_volume = float(np.prod(mask.spacing_mm))
    upper = np.array(array.shape) - 1
    notes: list[str] = []
    vertebrae: list[Vertebra] = []
    for label, index in _vertebra_voxels(array).items():
        if label not in VERTEBRA_NAMES:
            notes.append(f"label {label} ({len(index)} voxels) is not a VerSe vertebra id; ignored")
            continue
        centroid = index.mean(axis=0)
        vertebrae.append(Vertebra(
            label=label, voxel_index=index, volume_mm3=len(index) * voxel_volume, centroid_voxel=centroid,
            centroid_ras=voxel_to_world(mask.affine, centroid[None])[0],
            touches_border=bool(np.any(index == 0) or np.any(index == upper)),
        ))
    vertebrae.sort(key=lambda v: spine_rank(v.label))
    _flag_cut_vertebrae(vertebrae, min_volume_mm3, cut_fraction)
    return vertebrae, notes


@dataclass
class CentreLine:
    """Interpolating spline through points (RAS mm, cranial -> caudal); tangents and arc lengths at the knots."""

    points: np.ndarray
    tangents: np.ndarray
    arc_mm: np.ndarray


def fit_centre_line(points_ras: np.ndarray, samples_per_segment: int = 64) -> CentreLine:
    """Fit a cubic (fewer points: lower-degree) spline through ``points_ras`` (N, 3), chord-length parametrised.

    One point gives a vertical line (tangent pointing inferior). Arc lengths are measured along
    the spline from the first point.
    """
    points = np.asarray(points_ras, dtype=np.float64)
    if len(points) == 1:
        return CentreLine(points, np.array([[0.0, 0.0, -1.0]]), np.zeros(1))
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    if np.any(steps < 1.0):
        raise StraightenError("two vertebra centroids lie within 1 mm of each other; the labels overlap")
    chord = np.concatenate([[0.0], np.cumsum(steps)])
    spline = make_interp_spline(chord, points, k=min(3, len(points) - 1))
    tangents = spline.derivative()(chord)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    fractions = np.linspace(0.0, 1.0, samples_per_segment + 1)
    dense_t = np.append((chord[:-1, None] + np.diff(chord)[:, None] * fractions[None, :-1]).ravel(), chord[-1])
    dense = spline(dense_t)
    dense_arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    return CentreLine(points, tangents, dense_arc[::samples_per_segment])


def _nearest_usable_frame(vertebra: Vertebra, usable: list[Vertebra]) -> Frame:
    """Frame of the nearest complete vertebra (by spine order), moved to ``vertebra``'s centroid."""
    nearest = min(usable, key=lambda v: abs(spine_rank(v.label) - spine_rank(vertebra.label)))
    assert nearest.frame is not None
    origin = vertebra.body_centroid_ras if vertebra.body_centroid_ras is not None else vertebra.centroid_ras
    return Frame(origin.copy(), nearest.frame.tangent, nearest.frame.posterior, nearest.frame.left)


def _assign_frames(vertebrae: list[Vertebra], use_body: bool) -> CentreLine:
    """Fit the centre line through the usable vertebrae's (body or whole) centroids and set every frame."""
    usable = [v for v in vertebrae if v.usable]
    points = np.array([v.body_centroid_ras if use_body else v.centroid_ras for v in usable])
    line = fit_centre_line(points)
    tangents, posteriors, lefts = sagittal_frames(line.tangents)
    for i, vertebra in enumerate(usable):
        vertebra.frame = Frame(points[i].copy(), tangents[i], posteriors[i], lefts[i])
        vertebra.arc_mm = float(line.arc_mm[i])
    for vertebra in vertebrae:
        if not vertebra.usable:
            vertebra.frame = _nearest_usable_frame(vertebra, usable)
    return line


def _canal_gap_cut(u: np.ndarray, v: np.ndarray, spacing_max: float) -> tuple[float | None, float]:
    """Posterior-wall offset (mm along ``posterior``) from the mid-sagittal profile, and the slab's A-P depth.

    ``u``/``v``: posterior/left offsets (mm) of the label's voxels. Returns ``(None, depth)`` when
    the slab shows no canal gap behind a body of plausible depth.
    """
    half_width = max(MIDLINE_HALF_WIDTH_MM, spacing_max)
    slab = np.abs(v - np.median(v)) <= half_width
    if not slab.any():
        return None, 0.0
    profile = np.unique(np.round(u[slab], 3))
    depth = float(profile[-1] - profile[0])
    min_gap = max(MIN_CANAL_GAP_MM, 1.5 * spacing_max)
    gaps = np.flatnonzero(np.diff(profile) > min_gap)
    gaps = gaps[profile[gaps] - profile[0] >= MIN_BODY_DEPTH_MM]
    if gaps.size == 0:
        return None, depth
    return float(profile[gaps[0]]), depth


def _box_of(index: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Lower corner and shape of the bounding box of voxel indices (N, 3)."""
    low = index.min(axis=0)
    return low, tuple(int(n) for n in index.max(axis=0) - low + 1)


def _component_subset(index: np.ndarray, min_fraction: float | None) -> np.ndarray:
    """Voxel indices (N, 3) of the largest 26-connected component (``min_fraction`` None), or of
    every component holding at least ``min_fraction`` of the voxels."""
    low, shape = _box_of(index)
    box = np.zeros(shape, dtype=bool)
    local = index - low
    box[local[:, 0], local[:, 1], local[:, 2]] = True
    if min_fraction is None:
        keep = largest_component(box)
    else:
        keep = remove_small_components(box, int(np.ceil(min_fraction * len(index))))
    return index[keep[local[:, 0], local[:, 1], local[:, 2]]]


def _find_body(vertebra: Vertebra, affine: np.ndarray, spacing_max: float,
               typical_depth_mm: float | None) -> None:
    """Split ``vertebra`` into body and arch with its current frame; sets body voxels, centroid, cut plane."""
    frame = vertebra.frame
    assert frame is not None
    # parts of at least 10 % of the label: stray islands go, a body and an arch drawn apart stay
    index = _component_subset(vertebra.voxel_index, MIN_PART_FRACTION)
    offsets = voxel_to_world(affine, index) - frame.origin
    u = offsets @ frame.posterior
    v = offsets @ frame.left
    wall, slab_depth = _canal_gap_cut(u, v, spacing_max)
    anterior = float(u.min())
    if wall is not None:
        method = "canal_gap"
    elif slab_depth <= MAX_BODY_ONLY_DEPTH_MM:
        wall, method = float(u.max()), "no_posterior_elements"
    else:
        depth = typical_depth_mm if typical_depth_mm is not None else DEFAULT_BODY_DEPTH_FRACTION * slab_depth
        wall, method = anterior + depth, "typical_depth"
    body = _component_subset(index[u <= wall + 1e-6], None)
    body_world = voxel_to_world(affine, body)
    vertebra.body_voxel_index = body
    vertebra.body_centroid_ras = body_world.mean(axis=0)
    vertebra.body_method = method
    vertebra.posterior_wall_mm = wall
    vertebra.body_depth_mm = wall - anterior


def _find_bodies(vertebrae: list[Vertebra], affine: np.ndarray, spacing_max: float) -> None:
    """De-pedicle every vertebra that is not too small; failures fall back to the typical body depth."""
    candidates = [v for v in vertebrae if v.status != STATUS_TOO_SMALL]
    for vertebra in candidates:
        _find_body(vertebra, affine, spacing_max, None)
    measured = [v.body_depth_mm for v in candidates if v.body_method == "canal_gap"]
    typical = float(np.median(measured)) if measured else None
    for vertebra in candidates:
        if vertebra.body_method == "typical_depth" and typical is not None:
            _find_body(vertebra, affine, spacing_max, typical)


def _extent_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Products of the robust extents (0.5 %-trimmed, mm) of rows of ``a`` and ``b`` (angles x points)."""
    trim = a.shape[1] // 200
    kth = [trim, a.shape[1] - 1 - trim]
    ends_a = np.partition(a, kth, axis=1)[:, kth]
    ends_b = np.partition(b, kth, axis=1)[:, kth]
    return (ends_a[:, 1] - ends_a[:, 0]) * (ends_b[:, 1] - ends_b[:, 0])


def _best_rotation(offsets: np.ndarray, axis: np.ndarray, across: np.ndarray, max_tilt_deg: float) -> np.ndarray:
    """Rotate ``axis`` towards ``across`` by the angle that minimises the body's bounding rectangle in their plane."""
    best = 0.0
    for step, span in ((1.0, max_tilt_deg), (0.1, 1.0)):
        angles = np.radians(best + np.arange(-span, span + step / 2, step))
        tilted = np.cos(angles)[:, None] * axis + np.sin(angles)[:, None] * across
        normal = -np.sin(angles)[:, None] * axis + np.cos(angles)[:, None] * across
        area = _extent_area(tilted @ offsets.T, normal @ offsets.T)
        best = float(np.degrees(angles[int(np.argmin(area))]))
    angle = np.radians(best)
    return np.cos(angle) * axis + np.sin(angle) * across


def _align_to_body(vertebra: Vertebra, affine: np.ndarray, max_tilt_deg: float) -> None:
    """Turn the vertebra's tangent, within ``max_tilt_deg`` of the centre line's, to the body's own axis.

    The body's axis is the orientation of its smallest bounding rectangle, first in the
    sagittal plane (tangent/posterior), then in the coronal plane (tangent/left): the
    endplates become perpendicular to the tangent, so heights are measured across them.
    """
    frame = vertebra.frame
    offsets = voxel_to_world(affine, vertebra.body_voxel_index) - frame.origin
    if len(offsets) > ALIGN_MAX_POINTS:
        offsets = offsets[:: int(np.ceil(len(offsets) / ALIGN_MAX_POINTS))]
    tangent = _best_rotation(offsets, frame.tangent, frame.posterior, max_tilt_deg)
    _, posterior, left = sagittal_frames(tangent)
    tangent = _best_rotation(offsets, tangent, left[0], max_tilt_deg)
    tangents, posteriors, lefts = sagittal_frames(tangent)
    vertebra.frame = Frame(frame.origin, tangents[0], posteriors[0], lefts[0])


def _set_body_extents(vertebrae: list[Vertebra], affine: np.ndarray) -> None:
    """Cranial/caudal extent (mm along the tangent) of each usable body from its centroid."""
    for vertebra in vertebrae:
        if not vertebra.usable or vertebra.body_voxel_index is None:
            continue
        frame = vertebra.frame
        along = (voxel_to_world(affine, vertebra.body_voxel_index) - frame.origin) @ frame.tangent
        vertebra.body_extent_mm = (float(-along.min()), float(along.max()))


def build_spine_model(mask: Volume, min_volume_mm3: float = MIN_VOLUME_MM3,
                      cut_fraction: float = CUT_VOLUME_FRACTION,
                      align_bodies_deg: float = MAX_BODY_TILT_DEG) -> SpineModel:
    """Measure all vertebrae, de-pedicle them and fit the centre line through the body centroids.

    Two passes: frames from the whole-vertebra centroids give first bodies; frames from the
    spline through those body centroids give the final bodies; the final centre line passes
    through the final body centroids. Raises :class:`StraightenError` when no vertebra is complete.
    """
    vertebrae, notes = measure_vertebrae(mask, min_volume_mm3, cut_fraction)
    if not any(v.usable for v in vertebrae):
        found = ", ".join(f"{v.name} ({v.reason})" for v in vertebrae) or "no vertebra labels"
        raise StraightenError(f"{mask.path}: no complete vertebra in the mask: {found}")
    spacing_max = float(np.max(mask.spacing_mm))
    _assign_frames(vertebrae, use_body=False)
    _find_bodies(vertebrae, mask.affine, spacing_max)
    _assign_frames(vertebrae, use_body=True)
    _find_bodies(vertebrae, mask.affine, spacing_max)
    _assign_frames(vertebrae, use_body=True)
    if align_bodies_deg > 0:
        for vertebra in vertebrae:
            if vertebra.usable:
                _align_to_body(vertebra, mask.affine, align_bodies_deg)
    _set_body_extents(vertebrae, mask.affine)
    for vertebra in vertebrae:
        if vertebra.body_method == "typical_depth":
            notes.append(f"{vertebra.name}: no spinal canal found in the mid-sagittal slab; "
                         f"body cut at the typical depth {vertebra.body_depth_mm:.1f} mm")
    return SpineModel(vertebrae, tuple(int(n) for n in mask.array.shape), np.asarray(mask.affine), notes)


def body_label_map(model: SpineModel) -> np.ndarray:
    """uint8 label map on the mask grid holding only the vertebral bodies (VerSe ids)."""
    bodies = np.zeros(model.shape, dtype=np.uint8)
    for vertebra in model.vertebrae:
        if vertebra.body_voxel_index is not None:
            index = vertebra.body_voxel_index
            bodies[index[:, 0], index[:, 1], index[:, 2]] = vertebra.label
    return bodies
