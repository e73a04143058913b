"""Synthetic spine CT phantoms with known anatomy, fractures and truth (DESIGN section 6).

A case is built in a physical frame (RAS millimetres). The spine's centre line is a
smooth curve (lordosis, kyphosis, mild scoliosis) through the vertebral body centres.
Each vertebra is a rigid implicit model in its own *local frame*:

* ``origin``: a point of the centre line, the centre of the healthy body;
* ``superior`` (u): the centre line's tangent, pointing cranially;
* ``anterior`` (a): the patient's anterior direction made orthogonal to ``superior``
  (then turned by a small axial rotation);
* ``left`` (l) = superior x anterior.

Every voxel centre of the output grid is mapped into the local frames and tested
against the models (vectorised numpy, one bounding box at a time), so the mask is
the anatomy sampled at voxel centres. The volume is assembled in RAS axis order and
finally transposed/flipped into the requested orientation; the same seed and the same
spacing per RAS axis therefore give the same anatomy in every orientation.

Body height definition (the truth file's ``height_pre_mm`` / ``height_post_mm``):
the distance along the vertebra's ``superior`` axis from the lower to the upper
endplate surface (endplate concavity included), on the mid-sagittal plane of the
local frame (l = 0), at the centres of the posterior, middle and anterior thirds
of the body's antero-posterior extent [-D/2, D/2], i.e. at a = -D/3, 0, +D/3 mm
from the frame origin. ``height_pre_mm`` is the healthy body, ``height_post_mm``
the body as drawn in the image. A fracture scales the local height
``H_post(a, l) = H_pre(a, l) * (1 - loss(a, l))`` about the body's mid-surface;
``loss_ratio`` is the largest of the three regional losses ``1 - post / pre`` and
sets the Genant grade (0: < 20 %, 1: 20-25 %, 2: 25-40 %, 3: > 40 %).
Morphologies: wedge (loss grows linearly towards the anterior wall; posterior third
intact), biconcave (loss deepest at the body centre), crush (85-100 % of the loss
everywhere). A neighbour of a fractured body keeps a normal disc to the body's
tallest remaining part.

Anatomy: bodies (cortical shell ≈ 750-1000 HU, textured cancellous core ≈ 100-250 HU,
sclerotic band under a collapsed endplate, concave endplates), pedicles, lamina,
spinous, transverse and articular processes (all with the vertebra's VerSe label),
discs (≈ 70-95 HU), spinal canal with cord, ribs for T1-T12 (unlabelled), paraspinal
and psoas muscles, aorta and IVC, lungs, abdominal fat/organ mixture, subcutaneous
fat, skin, air; a 0.5-voxel Gaussian PSF and Gaussian noise.

Truth keys beyond DESIGN 6, per vertebra: ``loss_by_region``, ``frame`` (origin and
unit axes, RAS), ``height_points_ras_mm`` (mid-height points where heights are
defined), ``body_depth_mm``, ``body_width_mm``, ``disc_below_mm``, ``body_voxels``,
``vertebra_centroid_voxel`` / ``vertebra_centroid_ras_mm`` / ``vertebra_voxels``
(all voxels of the label), ``adjacent_fracture``, ``truncated`` (part outside the
volume) and ``height_resolution_mm`` = sum_k |superior_k| * spacing_k, the voxel's
extent along the spine axis: a height measured by counting mask voxels can be off by
up to this much (sub-voxel agreement needs averaging over neighbouring columns).
``centroid_*`` is the centroid of the body voxels (post-fracture). Per case:
``affine``, ``shape``, ``seed``, ``noise_hu``, ``height_definition`` and
``centreline_ras_mm`` (the centre line every 2 mm, cranial to caudal).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from data.image_io import save_nifti, voxel_to_world, world_to_voxel
from data.labels import VERTEBRA_NAMES, spine_rank, split_key, vertebra_name
from evaluation.genant import GENANT_THRESHOLDS, genant_grade  # noqa: F401  (re-exported for the phantom tools)
from util.fileio import write_json

GENERATOR_VERSION = "healthivert-phantom-1"
DEFAULT_LABELS: tuple[int, ...] = tuple(range(17, 25))  # T10-L5
REGIONS = ("anterior", "middle", "posterior")
MORPHOLOGIES = ("none", "wedge", "biconcave", "crush")
ORIENTATIONS = ("RAS", "LPS", "LAS", "RPS", "LPI", "RAI", "PIR", "ASL", "PIL", "AIL", "IPL", "SPR", "LIP", "RSA")
HEIGHT_DEFINITION = (
    "Body height in mm along frame.superior, from the lower to the upper endplate surface (endplate concavity "
    "included), on the mid-sagittal plane of the vertebra's frame (left = 0), at the centres of the posterior, "
    "middle and anterior thirds of the body's antero-posterior extent [-D/2, D/2] (anterior coordinate -D/3, 0, "
    "+D/3 mm from frame.origin_ras_mm, D = body_depth_mm). pre = healthy body, post = body as drawn. "
    "loss_ratio = max over regions of 1 - post/pre; grade by Genant: <0.20 -> 0, <0.25 -> 1, <=0.40 -> 2, else 3."
)

# Nominal adult dimensions (mm) at anchor levels, interpolated by spine rank:
# posterior body height, anterior/posterior height ratio, body depth (AP), body width,
# disc below, canal AP half-axis, canal lateral half-axis, pedicle width,
# spinous process length, spinous process downward angle (deg), transverse process length.
_ANCHOR_RANKS = np.array([1.0, 3.0, 8.0, 13.0, 17.0, 19.0, 20.0, 22.0, 24.0, 25.0])
_ANCHORS = {
    "height": [14.0, 14.0, 17.0, 19.0, 22.0, 24.0, 25.0, 27.0, 27.0, 27.0],
    "wedge_ratio": [0.95, 0.95, 0.97, 0.92, 0.94, 0.95, 0.97, 1.00, 1.08, 1.08],
    "depth": [16.0, 16.0, 17.0, 24.0, 28.0, 31.0, 32.0, 34.0, 35.0, 35.0],
    "width": [20.0, 20.0, 27.0, 30.0, 36.0, 42.0, 44.0, 49.0, 52.0, 52.0],
    "disc": [5.0, 5.0, 4.0, 4.5, 6.0, 8.0, 9.0, 10.0, 11.0, 11.0],
    "canal_ap": [7.0, 7.0, 7.0, 7.0, 7.5, 8.0, 8.0, 8.0, 8.5, 8.5],
    "canal_lat": [12.0, 12.0, 8.0, 7.5, 8.0, 9.0, 10.0, 11.5, 12.5, 12.5],
    "pedicle": [5.0, 5.0, 6.0, 6.0, 6.5, 7.5, 8.0, 9.0, 11.0, 11.0],
    "spinous_len": [18.0, 18.0, 30.0, 38.0, 35.0, 32.0, 30.0, 30.0, 25.0, 25.0],
    "spinous_deg": [20.0, 20.0, 35.0, 55.0, 35.0, 15.0, 8.0, 5.0, 5.0, 5.0],
    "tp_len": [10.0, 10.0, 16.0, 16.0, 18.0, 15.0, 20.0, 27.0, 22.0, 22.0],
}


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Fracture:
    """A fracture of one vertebral body: morphology and largest regional height-loss ratio (0-1)."""

    morphology: str
    loss_ratio: float

    def __post_init__(self) -> None:
        if self.morphology not in MORPHOLOGIES[1:]:
            raise ValueError(f"fracture morphology {self.morphology!r}; expected one of {MORPHOLOGIES[1:]}")
        if not 0.0 < self.loss_ratio < 0.8:
            raise ValueError(f"fracture loss ratio {self.loss_ratio}; expected 0 < loss < 0.8")


@dataclass(frozen=True)
class CaseSpec:
    """Everything that defines one phantom case; unset fields are drawn from ``seed``.

    ``spacing_mm`` and ``shape`` are per *output array axis* (the axis order of
    ``orientation``). ``shape=None`` fits the field of view to the anatomy plus
    ``margin_mm``; a given shape is centred on the torso (vertebrae outside it are
    cut and flagged ``truncated``).
    """

    case: str
    seed: int
    labels: tuple[int, ...] = DEFAULT_LABELS
    fractures: Mapping[int, Fracture] = field(default_factory=dict)
    orientation: str | None = None
    spacing_mm: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None
    noise_hu: float | None = None
    margin_mm: float = 12.0


@dataclass
class PhantomCase:
    """A generated case: int16 HU CT, uint8 VerSe-label mask (same grid), affine and truth dict."""

    case: str
    ct: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    truth: dict[str, Any]


def parse_vertebra_range(text: str) -> tuple[int, ...]:
    """VerSe labels of a range such as ``"T10-L5"``, ``"C1-L5"`` or ``"L1"`` (cranial to caudal)."""
    by_name = {name: label for label, name in VERTEBRA_NAMES.items()}
    first, _, last = text.strip().upper().partition("-")
    last = last or first
    if first not in by_name or last not in by_name:
        raise ValueError(f"vertebra range {text!r}: use names such as T10-L5 (known: C1-C7, T1-T13, L1-L6)")
    ordered = sorted(VERTEBRA_NAMES, key=spine_rank)
    start, stop = ordered.index(by_name[first]), ordered.index(by_name[last])
    if stop < start:
        raise ValueError(f"vertebra range {text!r}: the first vertebra must be cranial to the last")
    labels = [lab for lab in ordered[start : stop + 1] if lab not in (25, 28) or lab in (by_name[first], by_name[last])]
    return tuple(labels)


# --------------------------------------------------------------------------- geometry helpers


@dataclass(frozen=True)
class _Frame:
    """A vertebra's local frame: origin (RAS mm) and rows superior, anterior, left (unit vectors)."""

    origin: np.ndarray
    rotation: np.ndarray  # (3, 3), rows = superior, anterior, left

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """Local (u, a, l) mm points (N, 3) -> RAS mm (N, 3)."""
        return self.origin + np.asarray(local, dtype=np.float64) @ self.rotation


@dataclass(frozen=True)
class _Grid:
    """The RAS-ordered working grid: voxel (i, j, k) centre = origin + (i, j, k) * spacing (mm)."""

    origin: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]

    def axis_mm(self, axis: int, start: int, stop: int) -> np.ndarray:
        """World coordinate (mm) of voxel centres ``start..stop-1`` along RAS axis ``axis``."""
        return self.origin[axis] + np.arange(start, stop, dtype=np.float64) * self.spacing[axis]

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS affine of the working grid."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine


@dataclass
class _Block:
    """A box of the working grid with each voxel's local coordinates (float32, mm)."""

    slices: tuple[slice, slice, slice]
    u: np.ndarray
    a: np.ndarray
    left: np.ndarray


def _box_corners(low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """The 8 corners (8, 3) of the box [low, high]."""
    return np.array([[c0, c1, c2] for c0 in (low[0], high[0]) for c1 in (low[1], high[1]) for c2 in (low[2], high[2])])


def _block(grid: _Grid, frame: _Frame, low: Sequence[float], high: Sequence[float]) -> _Block | None:
    """Voxels whose centres may lie in the local box [low, high] (u, a, l mm), with local coordinates."""
    world = frame.to_world(_box_corners(low, high))
    start = np.ceil((world.min(axis=0) - grid.origin) / grid.spacing).astype(int)
    stop = np.floor((world.max(axis=0) - grid.origin) / grid.spacing).astype(int) + 1
    start = np.clip(start, 0, grid.shape)
    stop = np.clip(stop, 0, grid.shape)
    if np.any(stop <= start):
        return None
    relative = [
        (grid.axis_mm(k, start[k], stop[k]) - frame.origin[k]).astype(np.float32).reshape(
            [-1 if j == k else 1 for j in range(3)]
        )
        for k in range(3)
    ]
    rot = frame.rotation.astype(np.float32)
    local = [relative[0] * rot[r, 0] + relative[1] * rot[r, 1] + relative[2] * rot[r, 2] for r in range(3)]
    return _Block(tuple(slice(int(s), int(e)) for s, e in zip(start, stop)), *local)


def _segment_distance(block: _Block, p0: Sequence[float], p1: Sequence[float], l_scale: float = 1.0) -> np.ndarray:
    """Distance (mm) of each block voxel to the local segment p0-p1; the l axis is stretched by ``l_scale``."""
    p0 = np.asarray(p0, dtype=np.float32)
    d = np.asarray(p1, dtype=np.float32) - p0
    d[2] *= l_scale
    du, da, dl = block.u - p0[0], block.a - p0[1], (block.left - p0[2]) * l_scale
    t = np.clip((du * d[0] + da * d[1] + dl * d[2]) / float(d @ d), 0.0, 1.0)
    return np.sqrt((du - t * d[0]) ** 2 + (da - t * d[1]) ** 2 + (dl - t * d[2]) ** 2)


# --------------------------------------------------------------------------- vertebra model


@dataclass
class _Vertebra:
    """One vertebra's dimensions (mm), frame, fracture and intensities."""

    label: int
    height_post_rim: float
    height_ant_rim: float
    depth: float
    width: float
    concave_top: float
    concave_bottom: float
    disc_below: float
    canal_ap: float
    canal_lat: float
    pedicle: float
    lamina: float
    spinous_len: float
    spinous_deg: float
    tp_len: float
    fracture: Fracture | None
    cancellous_hu: float
    cortical_hu: float
    texture_offset: np.ndarray
    frame: _Frame | None = None
    disc_above: float = 0.0

    @property
    def height(self) -> float:
        """Mean rim height (mm), the scale of the posterior elements."""
        return 0.5 * (self.height_post_rim + self.height_ant_rim)

    @property
    def canal_centre(self) -> float:
        """Anterior coordinate (mm) of the spinal canal's centre."""
        return -0.5 * self.depth - self.canal_ap - 0.5


def _nominal(label: int) -> dict[str, float]:
    """Nominal dimensions of a level (see ``_ANCHORS``), interpolated by spine rank."""
    rank = spine_rank(label)
    return {key: float(np.interp(rank, _ANCHOR_RANKS, values)) for key, values in _ANCHORS.items()}


def _cross_section(v: _Vertebra, a: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Normalised body cross-section coordinate (<= 1 inside; posterior wall flat at a = -D/2)."""
    shift = 0.125 * v.depth
    return ((a + shift) / (0.5 * v.depth + shift)) ** 2 + (left / (0.5 * v.width)) ** 2


def _loss(v: _Vertebra, a: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Fractional height loss at local (a, l); equals the regional losses at the third centres."""
    if v.fracture is None:
        return np.zeros(np.broadcast(a, left).shape, dtype=np.float32)
    r = v.fracture.loss_ratio
    posterior_to_anterior = (a + v.depth / 3.0) / (2.0 * v.depth / 3.0)  # 0 at posterior centre, 1 at anterior
    if v.fracture.morphology == "wedge":
        loss = r * np.clip(posterior_to_anterior, 0.0, None)
    elif v.fracture.morphology == "biconcave":
        rho2 = (a / (0.5 * v.depth)) ** 2 + (left / (0.5 * v.width)) ** 2
        loss = r * np.clip(1.0 - rho2 / 0.5625, 0.0, None)  # 0.5625 = 0.75**2
    else:  # crush: the whole body, slightly more anteriorly
        loss = r * (0.85 + 0.15 * np.clip(posterior_to_anterior, 0.0, 1.25))
    return np.minimum(loss, 0.9).astype(np.float32)


def _endplates(v: _Vertebra, a: np.ndarray, left: np.ndarray, fractured: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower endplate surfaces u_top(a, l), u_bottom(a, l) in mm (concave, fracture applied)."""
    rim = v.height_post_rim + (v.height_ant_rim - v.height_post_rim) * (a + 0.5 * v.depth) / v.depth
    dip = np.clip(1.0 - (a / (0.5 * v.depth)) ** 2 - (left / (0.5 * v.width)) ** 2, 0.0, None)
    top = 0.5 * rim - v.concave_top * dip
    bottom = -0.5 * rim + v.concave_bottom * dip
    if not fractured or v.fracture is None:
        return top, bottom
    middle = 0.5 * (top + bottom)
    half = 0.5 * (top - bottom) * (1.0 - _loss(v, a, left))
    return middle + half, middle - half


def region_centres_mm(depth_mm: float) -> dict[str, float]:
    """Anterior coordinate (mm, local frame) of the centre of each third of a body of depth ``depth_mm``."""
    return {"anterior": depth_mm / 3.0, "middle": 0.0, "posterior": -depth_mm / 3.0}


def _regional_heights(v: _Vertebra, fractured: bool) -> dict[str, float]:
    """Body heights (mm) at the three region centres on the mid-sagittal plane (see module docstring)."""
    heights = {}
    for region, a in region_centres_mm(v.depth).items():
        top, bottom = _endplates(v, np.float32(a), np.float32(0.0), fractured)
        heights[region] = float(top - bottom)
    return heights


def _body_extent(v: _Vertebra) -> tuple[float, float]:
    """Highest upper and lowest lower endplate point (u, mm) of the drawn body."""
    a, left = np.meshgrid(np.linspace(-0.5 * v.depth, 0.5 * v.depth, 41),
                          np.linspace(-0.5 * v.width, 0.5 * v.width, 41))
    inside = _cross_section(v, a, left) <= 1.0
    top, bottom = _endplates(v, a.astype(np.float32), left.astype(np.float32))
    return float(top[inside].max()), float(bottom[inside].min())


# --------------------------------------------------------------------------- random anatomy


def _draw_vertebrae(spec: CaseSpec, rng: np.random.Generator) -> list[_Vertebra]:
    """Per-level dimensions with a per-case size, ±5 % natural variation and the spec's fractures."""
    size = rng.uniform(0.9, 1.1)
    height_scale = size * rng.uniform(0.95, 1.05)
    bone_hu = rng.uniform(110.0, 230.0)
    vertebrae = []
    for label in spec.labels:
        nominal = _nominal(label)
        height = nominal["height"] * height_scale * (1.0 + 0.05 * np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))
        wedge = nominal["wedge_ratio"] * rng.uniform(0.98, 1.02)
        depth = nominal["depth"] * size * rng.uniform(0.97, 1.03)
        vertebrae.append(
            _Vertebra(
                label=label,
                height_post_rim=2.0 * height / (1.0 + wedge),
                height_ant_rim=2.0 * height * wedge / (1.0 + wedge),
                depth=depth,
                width=nominal["width"] * size * rng.uniform(0.97, 1.03),
                concave_top=rng.uniform(0.8, 1.6),
                concave_bottom=rng.uniform(0.8, 1.6),
                disc_below=nominal["disc"] * size * rng.uniform(0.85, 1.15),
                canal_ap=nominal["canal_ap"] * size,
                canal_lat=nominal["canal_lat"] * size,
                pedicle=nominal["pedicle"] * size,
                lamina=rng.uniform(4.0, 5.5) * size,
                spinous_len=nominal["spinous_len"] * size * rng.uniform(0.9, 1.1),
                spinous_deg=nominal["spinous_deg"] + rng.uniform(-5.0, 5.0),
                tp_len=nominal["tp_len"] * size * rng.uniform(0.9, 1.1),
                fracture=spec.fractures.get(label),
                cancellous_hu=bone_hu + rng.uniform(-12.0, 12.0),
                cortical_hu=rng.uniform(750.0, 950.0),
                texture_offset=rng.uniform(0.0, 64.0, size=3),
            )
        )
    for upper, lower in zip(vertebrae[:-1], vertebrae[1:]):
        lower.disc_above = upper.disc_below
    vertebrae[0].disc_above = _nominal(spec.labels[0])["disc"] * size
    return vertebrae


@dataclass(frozen=True)
class _CentreLine:
    """Dense samples of the spine's centre line, ordered cranial -> caudal."""

    points: np.ndarray  # (N, 3) RAS mm
    arc_mm: np.ndarray  # (N,) arc length from the first sample

    def at(self, arc: float) -> tuple[np.ndarray, np.ndarray]:
        """Point and unit caudal tangent at arc length ``arc`` (mm)."""
        point = np.array([np.interp(arc, self.arc_mm, self.points[:, k]) for k in range(3)])
        step = 0.5
        ahead = np.array([np.interp(arc + step, self.arc_mm, self.points[:, k]) for k in range(3)])
        behind = np.array([np.interp(arc - step, self.arc_mm, self.points[:, k]) for k in range(3)])
        tangent = ahead - behind
        return point, tangent / np.linalg.norm(tangent)


def _draw_centre_line(vertebrae: list[_Vertebra], rng: np.random.Generator) -> _CentreLine:
    """A smooth curve x(t), y(t), z = -t: lordosis/kyphosis bumps at L3/T7/C4 and a sinusoidal scoliosis."""
    nominal_step = {lab: _nominal(lab)["height"] + _nominal(lab)["disc"] for lab in range(1, 26)}
    cumulative = np.cumsum([0.0] + [nominal_step[lab] for lab in range(1, 25)])  # top of C1 .. L5
    rank_position = lambda rank: float(np.interp(rank, np.arange(1, 26), cumulative))  # noqa: E731
    first = rank_position(spine_rank(vertebrae[0].label))
    span = sum(v.height + v.disc_below for v in vertebrae)
    t = np.arange(-120.0, span + 120.0, 0.25)
    absolute = t + first
    lordosis, kyphosis, cervical = rng.uniform(10.0, 25.0), rng.uniform(10.0, 25.0), rng.uniform(5.0, 12.0)
    y = (
        lordosis * np.exp(-(((absolute - rank_position(22.5)) / 90.0) ** 2))
        - kyphosis * np.exp(-(((absolute - rank_position(13.5)) / 110.0) ** 2))
        + cervical * np.exp(-(((absolute - rank_position(4.5)) / 50.0) ** 2))
    )
    scoliosis = rng.uniform(0.0, 9.0)
    x = scoliosis * np.sin(2.0 * np.pi * absolute / rng.uniform(250.0, 500.0) + rng.uniform(0.0, 2.0 * np.pi))
    points = np.stack([x, y, -t], axis=1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return _CentreLine(points, arc - float(np.interp(120.0, t + 120.0, arc)))


def _place_vertebrae(vertebrae: list[_Vertebra], line: _CentreLine, rng: np.random.Generator) -> None:
    """Set each vertebra's frame: origins along the centre line, bodies separated by their discs."""
    arc = 0.0
    rotation_per_mm = math.radians(rng.uniform(0.3, 0.6))
    for index, v in enumerate(vertebrae):
        if index:
            upper = vertebrae[index - 1]
            arc += -_body_extent(upper)[1] + upper.disc_below + _body_extent(v)[0]
        origin, caudal = line.at(arc)
        superior = -caudal
        anterior = np.array([0.0, 1.0, 0.0]) - superior[1] * superior
        anterior /= np.linalg.norm(anterior)
        left = np.cross(superior, anterior)
        angle = float(np.clip(rotation_per_mm * origin[0], -math.radians(5.0), math.radians(5.0)))
        cos, sin = math.cos(angle), math.sin(angle)
        anterior, left = cos * anterior + sin * left, cos * left - sin * anterior
        v.frame = _Frame(origin, np.stack([superior, anterior, left]))


# --------------------------------------------------------------------------- painting


def _texture_field(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A periodic, smoothed, unit-variance 3D noise field (sampled with wrap-around)."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size, size)), 1.0, mode="wrap")
    return ((noise - noise.mean()) / noise.std()).astype(np.float32)


def _sample_texture(
    field: np.ndarray, coords: Sequence[np.ndarray], cell_mm: Sequence[float], offset: np.ndarray
) -> np.ndarray:
    """Texture values at local points (u, a, l arrays, mm) with cell sizes ``cell_mm``."""
    grid = [np.asarray(c, dtype=np.float32) / cell + off for c, cell, off in zip(coords, cell_mm, offset)]
    return ndimage.map_coordinates(field, grid, order=1, mode="grid-wrap").astype(np.float32)


@dataclass(frozen=True)
class _VoxelStats:
    """Mean working-grid index (None when empty) and count of a set of voxels."""

    mean_index: np.ndarray | None
    count: int

    @classmethod
    def of(cls, selected: np.ndarray, slices: tuple[slice, slice, slice]) -> _VoxelStats:
        """Statistics of the True voxels of ``selected``, a boolean sub-block at ``slices``."""
        index = np.argwhere(selected)
        if not len(index):
            return cls(None, 0)
        return cls(index.mean(axis=0) + np.array([s.start for s in slices]), len(index))


def _label_stats(v: _Vertebra, grid: _Grid, mask: np.ndarray) -> _VoxelStats:
    """Statistics of all voxels carrying the vertebra's label (body and posterior elements)."""
    world = _vertebra_corners(v)
    start = np.clip(np.floor((world.min(axis=0) - grid.origin) / grid.spacing).astype(int), 0, grid.shape)
    stop = np.clip(np.ceil((world.max(axis=0) - grid.origin) / grid.spacing).astype(int) + 1, 0, grid.shape)
    slices = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    return _VoxelStats.of(mask[slices] == v.label, slices)


def _paint_body(v: _Vertebra, grid: _Grid, hu: np.ndarray, mask: np.ndarray, field: np.ndarray) -> _VoxelStats:
    """Draw the vertebral body (cortical shell, textured cancellous core, sclerosis if fractured).

    Returns the mean working-grid index and the number of the body voxels.
    """
    reach = 0.5 * max(v.height_post_rim, v.height_ant_rim) + 1.0
    half_depth, half_width = 0.5 * v.depth + 1.0, 0.5 * v.width + 1.0
    block = _block(grid, v.frame, (-reach, -half_depth, -half_width), (reach, half_depth, half_width))
    if block is None:
        return _VoxelStats(None, 0)
    u, a, left = np.broadcast_arrays(block.u, block.a, block.left)
    top, bottom = _endplates(v, a, left)
    section = _cross_section(v, a, left)
    inside = (u <= top) & (u >= bottom) & (section <= 1.0) & (a >= -0.5 * v.depth)
    if not inside.any():
        return _VoxelStats(None, 0)
    u, a, left, top, bottom, section = (x[inside] for x in (u, a, left, top, bottom, section))
    # Approximate signed distance to the body surface (mm, negative inside).
    depth_in = np.minimum.reduce(
        [top - u, u - bottom, (1.0 - np.sqrt(section)) * 0.5 * min(v.depth, v.width), a + 0.5 * v.depth]
    )
    texture = _sample_texture(field, (u, a, left), (2.0, 1.0, 1.0), v.texture_offset)
    values = v.cancellous_hu + 40.0 * texture
    if v.fracture is not None:
        loss = _loss(v, a, left)
        near_plate = np.minimum(top - u, u - bottom) < 4.0
        values += np.where(near_plate & (loss > 0.03), 130.0 * np.minimum(loss / 0.3, 1.0), 0.0)
    values = np.where(depth_in < 1.2, v.cortical_hu + 60.0 * texture, values)
    sub_hu, sub_mask = hu[block.slices], mask[block.slices]
    sub_hu[inside] = values
    sub_mask[inside] = v.label
    return _VoxelStats.of(inside, block.slices)


@dataclass(frozen=True)
class _Element:
    """A posterior element: local bounding box (u, a, l mm) and its approximate signed distance (mm, <= 0 inside)."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]
    distance: Callable[[_Block], np.ndarray]


def _capsule(p0: Sequence[float], p1: Sequence[float], radius: float, half_width: float | None = None) -> _Element:
    """A rounded rod from p0 to p1 (local mm); ``half_width`` flattens it along l (a plate)."""
    half_l = radius if half_width is None else half_width
    pad = np.array([radius, radius, half_l]) + 0.5
    low = tuple(np.minimum(p0, p1) - pad)
    high = tuple(np.maximum(p0, p1) + pad)
    return _Element(low, high, lambda b: _segment_distance(b, p0, p1, l_scale=radius / half_l) - radius)


def _posterior_elements(v: _Vertebra) -> list[_Element]:
    """Pedicles, lamina, spinous process, transverse processes and articular processes of one vertebra."""
    h, cc = v.height, v.canal_centre
    lateral = v.canal_lat + 0.5 * v.pedicle
    pedicle_front, pedicle_back = -0.5 * v.depth + 3.0, cc - 0.3 * v.canal_ap

    def pedicles(b: _Block) -> np.ndarray:
        radial = np.sqrt(((np.abs(b.left) - lateral) / (0.5 * v.pedicle)) ** 2 + ((b.u - 0.12 * h) / (0.32 * h)) ** 2)
        return np.maximum(np.maximum((radial - 1.0) * 0.5 * v.pedicle, b.a - pedicle_front), pedicle_back - b.a)

    lamina_low, lamina_high = -0.5 * h - 0.3 * v.disc_below, 0.38 * h

    def lamina(b: _Block) -> np.ndarray:
        outer = np.sqrt(((b.a - cc) / (v.canal_ap + v.lamina)) ** 2 + (b.left / (v.canal_lat + v.lamina)) ** 2)
        inner = np.sqrt(((b.a - cc) / v.canal_ap) ** 2 + (b.left / v.canal_lat) ** 2)
        ring = np.maximum((outer - 1.0) * v.lamina, (1.0 - inner) * v.canal_ap)
        return np.maximum(np.maximum(ring, b.a - cc), np.maximum(b.u - lamina_high, lamina_low - b.u))

    pedicle_box = ((-0.2 * h, pedicle_back, -lateral - v.pedicle), (0.44 * h, pedicle_front, lateral + v.pedicle))
    ring = (v.canal_ap + v.lamina, v.canal_lat + v.lamina)
    lamina_box = ((lamina_low, cc - ring[0], -ring[1]), (lamina_high, cc, ring[1]))
    elements = [_Element(*pedicle_box, pedicles), _Element(*lamina_box, lamina)]
    angle = math.radians(v.spinous_deg)
    root = (-0.05 * h, cc - v.canal_ap - v.lamina + 1.0, 0.0)
    tip = (root[0] - v.spinous_len * math.sin(angle), root[1] - v.spinous_len * math.cos(angle), 0.0)
    elements.append(_capsule(root, tip, 0.25 * h, half_width=3.0))
    tp_angle = math.radians(20.0)
    for side in (-1.0, 1.0):
        tp_root = (0.1 * h, cc + 0.2 * v.canal_ap, side * (v.canal_lat + 0.8 * v.pedicle))
        tp_tip = (
            0.1 * h + 2.0, tp_root[1] - v.tp_len * math.sin(tp_angle), tp_root[2] + side * v.tp_len * math.cos(tp_angle)
        )
        elements.append(_capsule(tp_root, tp_tip, 0.17 * h))
        sap_a, sap_l = cc - 0.35 * v.canal_ap, side * (v.canal_lat + 0.6 * v.pedicle)
        elements.append(_capsule((0.1 * h, sap_a, sap_l), (0.5 * h + 0.45 * v.disc_above, sap_a, sap_l), 0.14 * h))
        iap_a, iap_l = cc - 0.8 * v.canal_ap, side * (v.canal_lat + 0.2 * v.pedicle)
        elements.append(_capsule((-0.2 * h, iap_a, iap_l), (-0.5 * h - 0.45 * v.disc_below, iap_a, iap_l), 0.14 * h))
    return elements


def _posterior_box(v: _Vertebra) -> tuple[np.ndarray, np.ndarray]:
    """Local bounding box (u, a, l low/high, mm) of all posterior elements."""
    elements = _posterior_elements(v)
    return np.min([e.low for e in elements], axis=0), np.max([e.high for e in elements], axis=0)


def _paint_posterior(v: _Vertebra, grid: _Grid, hu: np.ndarray, mask: np.ndarray, field: np.ndarray) -> None:
    """Draw the posterior elements (cortex ≈ 650-850 HU, core ≈ 300 HU) with the vertebra's label.

    Elements are drawn one bounding box at a time; where they overlap the lower value
    wins, so a shell of one element inside another stays core bone.
    """
    for element in _posterior_elements(v):
        block = _block(grid, v.frame, element.low, element.high)
        if block is None:
            continue
        distance = element.distance(block)
        inside = distance <= 0.0
        if not inside.any():
            continue
        u, a, left = (np.broadcast_to(x, inside.shape)[inside] for x in (block.u, block.a, block.left))
        texture = _sample_texture(field, (u, a, left), (1.5, 1.5, 1.5), v.texture_offset + 7.0)
        values = np.where(distance[inside] > -1.0, v.cortical_hu - 120.0, 300.0) + 35.0 * texture
        sub_hu, sub_mask = hu[block.slices], mask[block.slices]
        mine = sub_mask[inside] == v.label
        values[mine] = np.minimum(values[mine], sub_hu[inside][mine])
        sub_hu[inside] = values
        sub_mask[inside] = v.label


_WORLD_FRAME = _Frame(np.zeros(3), np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]))


def _rib_polylines(v: _Vertebra, body: _Body) -> list[np.ndarray]:
    """RAS polylines (N, 3) of the two ribs of a thoracic vertebra (T1-T12): head, past the transverse process, arc."""
    rank = spine_rank(v.label)
    if not 8 <= rank <= 19:
        return []
    h, cc = v.height, v.canal_centre
    sweep = math.radians(115.0 if rank <= 17 else 80.0)
    rx = body.torso_radii[0] - body.fat_mm - 12.0
    front = body.torso_centre[1] + body.torso_radii[1] - body.fat_mm - 12.0
    lines = []
    for side in (-1.0, 1.0):
        head = v.frame.to_world(np.array([[0.25 * h, -0.5 * v.depth + 3.0, side * (0.5 * v.width - 3.0)]]))[0]
        lateral = v.canal_lat + 0.8 * v.pedicle + v.tp_len * math.cos(math.radians(20.0))
        tip_local = (0.1 * h + 2.0, cc + 0.2 * v.canal_ap - v.tp_len * math.sin(math.radians(20.0)) - 4.0,
                     side * lateral)
        tip = v.frame.to_world(np.array([tip_local]))[0]
        ry = 0.5 * (front - tip[1])
        cy, cx = tip[1] + ry, v.frame.origin[0]
        start = math.asin(min(abs(tip[0] - cx) / rx, 0.99))
        angles = np.linspace(start, start + sweep, 8)
        x_dir = -side  # left (+l) is -x in RAS
        arc = np.stack(
            [cx + x_dir * rx * np.sin(angles), cy - ry * np.cos(angles), tip[2] - 30.0 * (angles - start) / sweep],
            axis=1,
        )
        lines.append(np.vstack([head, tip, arc]))
    return lines


def _paint_ribs(v: _Vertebra, body: _Body, grid: _Grid, hu: np.ndarray, field: np.ndarray) -> None:
    """Unlabelled ribs of thoracic vertebrae (cortex ≈ 650 HU, marrow ≈ 250 HU), as chains of rods."""
    radius = 3.5 if spine_rank(v.label) <= 12 else 4.0
    for line in _rib_polylines(v, body):
        local = line @ _WORLD_FRAME.rotation.T
        for p0, p1 in zip(local[:-1], local[1:]):
            rod = _capsule(tuple(p0), tuple(p1), radius)
            block = _block(grid, _WORLD_FRAME, rod.low, rod.high)
            if block is None:
                continue
            distance = rod.distance(block)
            inside = distance <= 0.0
            if not inside.any():
                continue
            u, a, left = (np.broadcast_to(x, inside.shape)[inside] for x in (block.u, block.a, block.left))
            texture = _sample_texture(field, (u, a, left), (1.5, 1.5, 1.5), v.texture_offset + 31.0)
            sub = hu[block.slices]
            sub[inside] = np.where(distance[inside] > -1.2, 650.0, 250.0) + 30.0 * texture


def _paint_canal(v: _Vertebra, grid: _Grid, hu: np.ndarray) -> None:
    """Spinal canal contents (CSF ≈ 10 HU; cord ≈ 35 HU above L2, cauda equina ≈ 20 HU below)."""
    low = (-0.5 * v.height - 0.5 * v.disc_below - 1.0, v.canal_centre - v.canal_ap, -v.canal_lat)
    high = (0.5 * v.height + 0.5 * v.disc_above + 1.0, v.canal_centre + v.canal_ap, v.canal_lat)
    block = _block(grid, v.frame, low, high)
    if block is None:
        return
    radial = ((block.a - v.canal_centre) / v.canal_ap) ** 2 + (block.left / v.canal_lat) ** 2
    along = (block.u >= low[0]) & (block.u <= high[0])
    canal = (radial <= 1.0) & along
    cord = (radial <= 0.22) & along
    sub = hu[block.slices]
    sub[canal] = 10.0
    sub[cord] = 35.0 if spine_rank(v.label) < 21 else 20.0


def _paint_disc(upper: _Vertebra, lower: _Vertebra, grid: _Grid, hu: np.ndarray, field: np.ndarray) -> None:
    """Intervertebral disc filling the space between two bodies (nucleus ≈ 70 HU, annulus ≈ 95 HU; unlabelled)."""
    reach = max(upper.depth, lower.depth, upper.width, lower.width) * 0.5 + 1.0
    upper_low = _body_extent(upper)[1]
    span = upper.disc_below + _body_extent(lower)[0] - _body_extent(lower)[1] + upper.height
    block = _block(grid, upper.frame, (upper_low - span, -reach, -reach), (upper.height * 0.5, reach, reach))
    if block is None:
        return
    world = [block.u, block.a, block.left]
    # Local coordinates of the same voxels in the lower vertebra's frame.
    rel_rot = lower.frame.rotation @ upper.frame.rotation.T
    shift = (upper.frame.origin - lower.frame.origin) @ lower.frame.rotation.T
    lu, la, ll = (sum(world[k] * np.float32(rel_rot[r, k]) for k in range(3)) + np.float32(shift[r]) for r in range(3))
    _, upper_bottom = _endplates(upper, block.a, block.left)
    lower_top, _ = _endplates(lower, la, ll)
    section = np.minimum(_cross_section(upper, block.a, block.left), _cross_section(lower, la, ll))
    disc = (block.u <= upper_bottom) & (lu >= lower_top) & (section <= 1.0)
    if not disc.any():
        return
    u, a, left = (np.broadcast_to(x, disc.shape)[disc] for x in (block.u, block.a, block.left))
    texture = _sample_texture(field, (u, a, left), (3.0, 3.0, 3.0), upper.texture_offset + 19.0)
    hu[block.slices][disc] = np.where(section[disc] < 0.35, 70.0, 95.0) + 8.0 * texture


@dataclass(frozen=True)
class _Body:
    """Soft-tissue layout (RAS mm): torso ellipse, fat layer, organs; spine lookup tables by z."""

    torso_centre: np.ndarray
    torso_radii: np.ndarray
    fat_mm: float
    diaphragm_z: float
    spine_z: np.ndarray  # increasing
    spine_x: np.ndarray
    spine_y: np.ndarray
    depth: np.ndarray
    width: np.ndarray
    psoas: np.ndarray  # psoas muscle radius (mm), 0 above L1
    field: np.ndarray  # coarse random field in [0, 1] for fat / organ mixing
    field_cell_mm: float


def _draw_body(vertebrae: list[_Vertebra], line: _CentreLine, rng: np.random.Generator) -> _Body:
    """Torso and organ layout around the spine."""
    z_sorted = np.argsort(line.points[:, 2])
    spine_z, spine_x, spine_y = (line.points[z_sorted, k] for k in (2, 0, 1))
    centres_z = np.array([v.frame.origin[2] for v in vertebrae])
    order = np.argsort(centres_z)
    lookup = lambda values: np.interp(spine_z, centres_z[order], np.asarray(values)[order])  # noqa: E731
    tip = max(-v.canal_centre + v.canal_ap + v.lamina + v.spinous_len for v in vertebrae)
    spine_back = float(np.min(spine_y)) - tip - rng.uniform(12.0, 25.0)
    torso_centre = np.array([float(np.mean(spine_x)), float(np.mean(spine_y)) + rng.uniform(45.0, 70.0)])
    torso_radii = np.array([rng.uniform(140.0, 175.0), torso_centre[1] - spine_back])
    ranks = np.array([spine_rank(v.label) for v in vertebrae])
    diaphragm_z = _z_at_rank(19.6, ranks, centres_z)
    return _Body(
        torso_centre=torso_centre,
        torso_radii=torso_radii,
        fat_mm=rng.uniform(8.0, 25.0),
        diaphragm_z=diaphragm_z,
        spine_z=spine_z,
        spine_x=spine_x,
        spine_y=spine_y,
        depth=lookup([v.depth for v in vertebrae]),
        width=lookup([v.width for v in vertebrae]),
        psoas=lookup([max(0.0, 6.0 + 4.0 * (spine_rank(v.label) - 20.0)) if spine_rank(v.label) >= 20 else 0.0
                      for v in vertebrae]),
        field=(1.0 / (1.0 + np.exp(-2.5 * rng.standard_normal((24, 24, 24))))).astype(np.float32),
        field_cell_mm=14.0,
    )


def _z_at_rank(rank: float, ranks: np.ndarray, centres_z: np.ndarray) -> float:
    """Height z (mm) of a spine rank, linearly inter-/extrapolated from the vertebra centres."""
    if len(ranks) < 2:
        return float(centres_z[0] + 25.0 * (ranks[0] - rank))
    slope, intercept = np.polyfit(ranks, centres_z, 1)
    if ranks[0] <= rank <= ranks[-1]:
        return float(np.interp(rank, ranks, centres_z))
    return float(slope * rank + intercept)


def _linear_weights(coords: np.ndarray, cells: int, cell_mm: float) -> np.ndarray:
    """Linear interpolation weights (len(coords), cells) of a periodic coarse axis."""
    position = coords / cell_mm
    base = np.floor(position).astype(int)
    frac = position - base
    weights = np.zeros((coords.size, cells), dtype=np.float32)
    rows = np.arange(coords.size)
    np.add.at(weights, (rows, base % cells), 1.0 - frac)
    np.add.at(weights, (rows, (base + 1) % cells), frac)
    return weights


def _coarse_field_xy(body: _Body, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The body's coarse field interpolated on x (nx) and y (ny): shape (coarse z cells, nx, ny)."""
    cells = body.field.shape[0]
    wx, wy = (_linear_weights(c, cells, body.field_cell_mm) for c in (x, y))
    out = np.tensordot(wx, body.field, axes=(1, 0))  # (nx, cy, cz)
    out = np.tensordot(out, wy, axes=(1, 1))  # (nx, cz, ny)
    return np.ascontiguousarray(out.transpose(1, 0, 2))


def _interpolate_z(field_xy: np.ndarray, z: np.ndarray, cell_mm: float, out: np.ndarray) -> None:
    """out[:, :, j] = field linearly interpolated (periodically) at height z[j] (mm)."""
    cells = field_xy.shape[0]
    for j, position in enumerate(z / cell_mm):
        base = math.floor(position)
        frac = np.float32(position - base)
        np.multiply(field_xy[base % cells], 1 - frac, out=out[:, :, j])
        out[:, :, j] += frac * field_xy[(base + 1) % cells]


def _window(coords: np.ndarray, low: float, high: float) -> slice:
    """Index range of sorted ``coords`` within [low, high]."""
    return slice(int(np.searchsorted(coords, low)), int(np.searchsorted(coords, high, side="right")))


def _paint_background(body: _Body, grid: _Grid, hu: np.ndarray, chunk: int = 16) -> None:
    """Air, skin, subcutaneous fat, abdominal fat/organ mixture, lungs, muscles, aorta, IVC (chunks along z).

    Structures near the spine are evaluated only inside their (x, y) windows.
    """
    x = grid.axis_mm(0, 0, grid.shape[0]).astype(np.float32)
    y = grid.axis_mm(1, 0, grid.shape[1]).astype(np.float32)
    tx, ty = body.torso_centre
    rx, ry = body.torso_radii
    torso = np.sqrt(((x[:, None] - tx) / rx) ** 2 + ((y[None, :] - ty) / ry) ** 2)  # (nx, ny)
    skin_depth = (1.0 - torso) * min(rx, ry)
    air, skin, fat = torso > 1.0, skin_depth < 2.0, skin_depth < body.fat_mm + 2.0
    field_xy = _coarse_field_xy(body, x, y)
    mix = np.empty((grid.shape[0], grid.shape[1], chunk), dtype=np.float32)
    for start in range(0, grid.shape[2], chunk):
        stop = min(start + chunk, grid.shape[2])
        z = grid.axis_mm(2, start, stop)
        sx, sy, depth, width, psoas_r = (
            np.interp(z, body.spine_z, values).astype(np.float32)
            for values in (body.spine_x, body.spine_y, body.depth, body.width, body.psoas)
        )
        out, m = hu[:, :, start:stop], mix[:, :, : stop - start]
        _interpolate_z(field_xy, z, body.field_cell_mm, m)
        np.multiply(m, 140.0, out=out)
        out -= 100.0  # fat (-100 HU) to organ (+40 HU) mixture

        # near() is only called within this iteration, so the loop variables it reads are current
        def near(dx: float, dy_low: float, dy_high: float):
            """Views, spine-relative coordinates (x - sx, y - sy) and slices of a window around the spine."""
            xs = _window(x, float(sx.min()) - dx, float(sx.max()) + dx)  # noqa: B023
            ys = _window(y, float(sy.min()) + dy_low, float(sy.max()) + dy_high)  # noqa: B023
            return out[xs, ys], m[xs, ys], x[xs, None, None] - sx, y[None, ys, None] - sy, (xs, ys)  # noqa: B023

        w_max, d_max = float(width.max()), float(depth.max())
        if z.max() > body.diaphragm_z - 0.08 * (rx + abs(tx) + float(np.abs(sx).max())):
            o, mm, xr, yr, (xs, ys) = near(2.0 * rx, -0.5 * d_max - 45.0, 2.0 * ry)
            xr = np.abs(xr)
            lung = (z > body.diaphragm_z - 0.08 * xr) & (xr > 0.5 * width + 12.0) & (yr > -0.5 * depth - 45.0)
            lung &= ~((xr < 0.5 * width + 30.0) & (yr > 0.5 * depth))  # mediastinum
            lung &= (torso < 0.9)[xs, ys, None]
            o[lung] = -850.0 + 40.0 * mm[lung]
        o, mm, xr, yr, _ = near(w_max + 7.0, -d_max - 61.0, 5.0)
        paraspinal = ((np.abs(xr) - 0.45 * width) / (0.55 * width + 6.0)) ** 2 + ((yr + depth + 28.0) / 32.0) ** 2
        paraspinal = paraspinal <= 1.0
        o[paraspinal] = 46.0 + 12.0 * mm[paraspinal]
        if psoas_r.max() > 0:
            reach = float(psoas_r.max())
            o, _, xr, yr, _ = near(0.5 * w_max + 1.7 * reach + 1.0, -reach - 3.0, reach + 1.0)
            psoas = ((np.abs(xr) - 0.5 * width - 0.7 * psoas_r) ** 2 + (yr + 2.0) ** 2 <= psoas_r**2) & (psoas_r > 0)
            o[psoas] = 48.0
        o, _, xr, yr, _ = near(0.35 * w_max + 16.0, 0.0, 0.5 * d_max + 26.0)
        aorta = (xr + 0.2 * width + 4.0) ** 2 + (yr - 0.5 * depth - 13.0) ** 2 <= 121.0
        ivc = (psoas_r > 0) & ((xr - 0.35 * width - 4.0) ** 2 + (yr - 0.5 * depth - 11.0) ** 2 <= 90.0)
        o[aorta | ivc] = 40.0
        out[fat] = -105.0 + 10.0 * m[fat]
        out[skin] = 20.0
        out[air] = -1000.0


# --------------------------------------------------------------------------- grid and orientation


def _draw_orientation_and_spacing(rng: np.random.Generator) -> tuple[str, tuple[float, float, float]]:
    """A random orientation and spacing per output array axis (in-plane 0.7-1.0 mm, slice 1-3 mm)."""
    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    in_plane = round(float(rng.uniform(0.7, 1.0)), 3)
    slice_mm = round(float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0])), 3)
    return orientation, (in_plane, in_plane, slice_mm)


def _output_to_ras(orientation: str) -> np.ndarray:
    """nibabel orientation transform from the output axis codes to RAS."""
    return nio.ornt_transform(nio.axcodes2ornt(tuple(orientation)), nio.axcodes2ornt(("R", "A", "S")))


def _ras_spacing_and_shape(
    orientation: str, spacing: Sequence[float], shape: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Spacing (and shape) per RAS axis from the values per output array axis."""
    ornt = _output_to_ras(orientation)
    ras_spacing, ras_shape = np.zeros(3), np.zeros(3, dtype=int)
    for axis, (target, _) in enumerate(ornt.astype(int)):
        ras_spacing[target] = spacing[axis]
        if shape is not None:
            ras_shape[target] = shape[axis]
    return ras_spacing, (ras_shape if shape is not None else None)


def _vertebra_corners(v: _Vertebra) -> np.ndarray:
    """RAS corners (16, 3) of the local boxes holding the body and the posterior elements."""
    low, high = _posterior_box(v)
    reach = 0.5 * max(v.height_post_rim, v.height_ant_rim)
    body_low, body_high = (-reach, -0.5 * v.depth, -0.5 * v.width), (reach, 0.5 * v.depth, 0.5 * v.width)
    return v.frame.to_world(np.concatenate([_box_corners(low, high), _box_corners(body_low, body_high)]))


def _anatomy_box(vertebrae: list[_Vertebra], body: _Body, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """RAS box (mm) around the vertebrae (posterior elements included), the back skin and some air."""
    points = np.concatenate([_vertebra_corners(v) for v in vertebrae])
    low, high = points.min(axis=0) - margin, points.max(axis=0) + margin
    back = body.torso_centre[1] - body.torso_radii[1] - 10.0  # keep some air behind the back
    low[1] = min(low[1], back)
    high[1] = max(high[1], max(v.frame.origin[1] + 0.5 * v.depth for v in vertebrae) + 40.0)
    return low, high


def _working_grid(
    spec: CaseSpec, orientation: str, spacing: Sequence[float], vertebrae: list[_Vertebra], body: _Body
) -> _Grid:
    """The RAS-ordered grid: fitted to the anatomy, or of the given shape centred on the torso."""
    ras_spacing, ras_shape = _ras_spacing_and_shape(orientation, spacing, spec.shape)
    low, high = _anatomy_box(vertebrae, body, spec.margin_mm)
    if ras_shape is None:
        ras_shape = np.ceil((high - low) / ras_spacing).astype(int) + 1
        origin = low
    else:
        centre = np.array([body.torso_centre[0], body.torso_centre[1], 0.5 * (low[2] + high[2])])
        origin = centre - 0.5 * (ras_shape - 1) * ras_spacing
    return _Grid(np.asarray(origin, dtype=np.float64), ras_spacing, tuple(int(n) for n in ras_shape))


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


# --------------------------------------------------------------------------- case generation


def _truth_record(
    v: _Vertebra, body: _VoxelStats, whole: _VoxelStats, grid: _Grid, out_affine: np.ndarray,
    fractured_labels: set[int], neighbours: tuple[int | None, int | None], truncated: bool,
) -> dict[str, Any]:
    """The truth entry of one vertebra (see the module docstring for the height definition)."""
    pre, post = _regional_heights(v, fractured=False), _regional_heights(v, fractured=True)
    losses = {r: 1.0 - post[r] / pre[r] for r in REGIONS}
    loss_ratio = max(losses.values())

    def centroid(stats: _VoxelStats) -> tuple[list[float] | None, list[float] | None]:
        if stats.mean_index is None:
            return None, None
        world = voxel_to_world(grid.affine, stats.mean_index[None])
        voxel = world_to_voxel(out_affine, world)[0]
        return [round(float(c), 3) for c in voxel], [round(float(c), 3) for c in world[0]]

    body_voxel, body_world = centroid(body)
    whole_voxel, whole_world = centroid(whole)
    centres = region_centres_mm(v.depth)
    points = {r: v.frame.to_world(np.array([[0.0, centres[r], 0.0]]))[0] for r in REGIONS}
    return {
        "label": v.label,
        "name": vertebra_name(v.label),
        "grade": genant_grade(loss_ratio),
        "morphology": v.fracture.morphology if v.fracture else "none",
        "loss_ratio": round(loss_ratio, 6),
        "loss_by_region": {r: round(losses[r], 6) for r in REGIONS},
        "height_pre_mm": {r: round(pre[r], 4) for r in REGIONS},
        "height_post_mm": {r: round(post[r], 4) for r in REGIONS},
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
        "height_points_ras_mm": {r: [round(float(c), 4) for c in points[r]] for r in REGIONS},
        "height_resolution_mm": round(float(np.abs(v.frame.rotation[0]) @ grid.spacing), 4),
        "adjacent_fracture": any(n in fractured_labels for n in neighbours if n is not None),
        "truncated": truncated,
    }


def _is_truncated(v: _Vertebra, grid: _Grid) -> bool:
    """Whether part of the vertebra's bounding boxes lies outside the grid."""
    world = _vertebra_corners(v)
    grid_high = grid.origin + (np.array(grid.shape) - 1) * grid.spacing
    return bool(np.any(world.min(axis=0) < grid.origin) or np.any(world.max(axis=0) > grid_high))


def _valid_axis_codes(codes: str) -> bool:
    """Whether ``codes`` names one of R/L, A/P and S/I per axis (e.g. ``"PIR"``)."""
    pairs = [{"R", "L"}, {"A", "P"}, {"S", "I"}]
    used = sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in str(codes).upper())
    return len(codes) == 3 and used == [0, 1, 2] and str(codes).isupper()


def _check_spec(spec: CaseSpec) -> None:
    """Reject impossible specifications with a one-line reason."""
    for label in spec.labels:
        vertebra_name(label)
    ranks = [spine_rank(label) for label in spec.labels]
    if ranks != sorted(ranks) or len(set(ranks)) != len(ranks):
        raise ValueError(f"{spec.case}: labels {spec.labels} must be distinct and ordered cranial to caudal")
    unknown = set(spec.fractures) - set(spec.labels)
    if unknown:
        raise ValueError(f"{spec.case}: fractures given for labels {sorted(unknown)} that are not in the case")
    if spec.orientation is not None and not _valid_axis_codes(spec.orientation):
        raise ValueError(f"{spec.case}: orientation {spec.orientation!r} is not three axis codes such as RAS or PIR")
    if spec.spacing_mm is not None and (len(spec.spacing_mm) != 3 or min(spec.spacing_mm) <= 0):
        raise ValueError(f"{spec.case}: spacing {spec.spacing_mm} must be three positive numbers (mm)")
    if spec.shape is not None and (len(spec.shape) != 3 or min(spec.shape) < 8):
        raise ValueError(f"{spec.case}: shape {spec.shape} must be three sizes of at least 8 voxels")


def generate_case(spec: CaseSpec) -> PhantomCase:
    """Build one phantom case (CT, mask, affine, truth) from its specification; deterministic for ``spec``."""
    _check_spec(spec)
    anatomy_seq, texture_seq, noise_seq = np.random.SeedSequence(spec.seed).spawn(3)
    rng = np.random.default_rng(anatomy_seq)
    vertebrae = _draw_vertebrae(spec, rng)
    line = _draw_centre_line(vertebrae, rng)
    _place_vertebrae(vertebrae, line, rng)
    body = _draw_body(vertebrae, line, rng)
    drawn_orientation, drawn_spacing = _draw_orientation_and_spacing(rng)
    drawn_noise = float(rng.uniform(8.0, 20.0))
    orientation = spec.orientation or drawn_orientation
    spacing = tuple(float(s) for s in (spec.spacing_mm or drawn_spacing))
    noise_hu = drawn_noise if spec.noise_hu is None else float(spec.noise_hu)

    grid = _working_grid(spec, orientation, spacing, vertebrae, body)
    hu = np.empty(grid.shape, dtype=np.float32)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    field = _texture_field(np.random.default_rng(texture_seq))
    _paint_background(body, grid, hu)
    for v in vertebrae:
        _paint_canal(v, grid, hu)
        _paint_ribs(v, body, grid, hu, field)
    for upper, lower in zip(vertebrae[:-1], vertebrae[1:]):
        _paint_disc(upper, lower, grid, hu, field)
    for v in vertebrae:
        _paint_posterior(v, grid, hu, mask, field)
    body_stats = {v.label: _paint_body(v, grid, hu, mask, field) for v in vertebrae}
    label_stats = {v.label: _label_stats(v, grid, mask) for v in vertebrae}
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
            _truth_record(v, body_stats[v.label], label_stats[v.label], grid, out_affine, fractured, (above, below),
                          _is_truncated(v, grid))
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


# --------------------------------------------------------------------------- cohort planning


def case_id(index: int) -> str:
    """Case id of the ``index``-th phantom: ``ph000``, ``ph001``, ..."""
    return f"ph{index:03d}"


def case_seed(cohort_seed: int, index: int) -> int:
    """Seed of one case, derived from the cohort seed and the case index."""
    return int(np.random.SeedSequence([int(cohort_seed), int(index)]).generate_state(1)[0])


_GRADE_LOSS = {0: (0.05, 0.15), 1: (0.21, 0.24), 2: (0.27, 0.38), 3: (0.43, 0.58)}


def draw_loss_ratio(grade: int, rng: np.random.Generator) -> float:
    """A loss ratio well inside a Genant grade's range (≥ 1 % from every threshold)."""
    low, high = _GRADE_LOSS[grade]
    return round(float(rng.uniform(low, high)), 4)


def _fracture_positions(n: int, count: int, adjacent: bool, rng: np.random.Generator) -> list[int]:
    """Interior vertebra indices to fracture (never the first or last: they lack a neighbour)."""
    interior = list(range(1, n - 1))
    count = min(count, len(interior))
    if count == 0:
        return []
    if adjacent and count >= 2:
        start = int(rng.integers(1, n - 2))
        chosen = {start, start + 1}
        others = [i for i in interior if i not in chosen]
        chosen |= set(rng.choice(others, size=count - 2, replace=False).tolist()) if count > 2 else set()
        return sorted(chosen)
    for _ in range(50):
        chosen = sorted(rng.choice(interior, size=count, replace=False).tolist())
        if all(b - a > 1 for a, b in zip(chosen, chosen[1:])):
            return chosen
    return chosen


def plan_cohort(
    n_cases: int,
    seed: int,
    labels: Sequence[int] = DEFAULT_LABELS,
    orientation: str | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    noise_hu: float | None = None,
    margin_mm: float = 12.0,
    mild_deformity_rate: float = 0.15,
) -> list[CaseSpec]:
    """Specifications of a cohort: about a third of the vertebrae fractured, every grade and morphology present.

    Each case with at least five vertebrae gets grades 1, 2 and 3 (more fractures for
    longer spines); every third case (``ph001``, ``ph004``, ...) has two adjacent
    fractures; a few healthy vertebrae get a mild grade-0 deformity (loss 5-15 %).
    """
    if n_cases < 1:
        raise ValueError(f"cohort size {n_cases}: need at least one case")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**20]))
    labels = tuple(int(x) for x in labels)
    n = len(labels)
    morphology_deck: list[str] = []
    specs = []
    for index in range(n_cases):
        count = int(round(n * rng.uniform(0.28, 0.40)))
        count = max(count, min(3, n - 2)) if n >= 5 else max(1, count)
        positions = _fracture_positions(n, count, adjacent=(index % 3 == 1), rng=rng)
        grades = list(rng.permutation([1, 2, 3]))[: len(positions)]
        grades += [int(g) for g in rng.choice([1, 2, 3], size=len(positions) - len(grades), p=[0.3, 0.4, 0.3])]
        fractures: dict[int, Fracture] = {}
        for position, grade in zip(positions, rng.permutation(grades)):
            if not morphology_deck:
                morphology_deck = list(rng.permutation(["wedge", "wedge", "biconcave", "crush"]))
            fractures[labels[position]] = Fracture(str(morphology_deck.pop()), draw_loss_ratio(int(grade), rng))
        for position in range(1, n - 1):
            if labels[position] not in fractures and rng.uniform() < mild_deformity_rate:
                fractures[labels[position]] = Fracture(str(rng.choice(["wedge", "biconcave"])), draw_loss_ratio(0, rng))
        specs.append(
            CaseSpec(
                case=case_id(index), seed=case_seed(seed, index), labels=labels, fractures=fractures,
                orientation=orientation, spacing_mm=spacing_mm, shape=shape, noise_hu=noise_hu, margin_mm=margin_mm,
            )
        )
    _check_spec(specs[0])
    return specs


def make_split(
    truths: Sequence[Mapping[str, Any]], seed: int, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> dict[str, dict[str, int]]:
    """Split JSON (DESIGN 3.5) by case: ``{"train"|"val"|"test": {"<case>_<label>": grade}}``.

    Validation and test cases are taken preferably among cases holding every grade of
    the cohort, and only while the training cases keep every grade.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**21]))
    truths = sorted(truths, key=lambda t: t["case"])
    grades_of = {t["case"]: {v["grade"] for v in t["vertebrae"]} for t in truths}
    all_grades = set().union(*grades_of.values()) if grades_of else set()
    cases = [truths[i]["case"] for i in rng.permutation(len(truths))]
    n = len(cases)
    n_test = int(round(test_fraction * n)) if n >= 3 else 0
    n_val = int(round(val_fraction * n)) if n >= 3 else 0
    n_test, n_val = max(n_test, 1 if n >= 3 else 0), max(n_val, 1 if n >= 3 else 0)
    candidates = sorted(cases, key=lambda c: grades_of[c] != all_grades)  # complete cases first (stable)
    assignment = {c: "train" for c in cases}
    for split, wanted in (("test", n_test), ("val", n_val)):
        for case in candidates:
            if wanted == 0:
                break
            if assignment[case] != "train":
                continue
            remaining = set().union(*(grades_of[c] for c in cases if assignment[c] == "train" and c != case))
            if remaining >= all_grades:
                assignment[case] = split
                wanted -= 1
    split_json: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for truth in truths:
        for v in truth["vertebrae"]:
            split_json[assignment[truth["case"]]][split_key(truth["case"], v["label"])] = int(v["grade"])
    return split_json


def make_cohort(
    out: str | Path,
    n_cases: int,
    seed: int,
    workers: int = 1,
    progress: bool = True,
    **plan_options: Any,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Generate and write a phantom cohort under ``out`` (``raw/<case>/`` and ``vertebra_data.json``).

    Continues past a failing case; returns (truth dicts of written cases, one-line failure messages).
    The split JSON is written only when every case succeeded.
    """
    from tqdm import tqdm

    specs = plan_cohort(n_cases, seed, **plan_options)
    truths: list[dict[str, Any]] = []
    failures: list[str] = []
    bar = tqdm(total=len(specs), desc="phantoms", unit="case", disable=not progress)
    for spec, result in _run_specs(specs, out, workers):
        if isinstance(result, dict):
            truths.append(result)
        else:
            failures.append(f"{spec.case}: {result}")
        bar.update(1)
    bar.close()
    if not failures:
        write_json(Path(out) / "vertebra_data.json", make_split(truths, seed))
    return sorted(truths, key=lambda t: t["case"]), failures


def _generate_and_write(spec: CaseSpec, out: str | Path) -> dict[str, Any] | str:
    """Worker: generate and write one case; return its truth or a one-line error."""
    try:
        case = generate_case(spec)
        write_case(case, out)
        return case.truth
    except (ValueError, OSError, MemoryError) as err:
        return f"{type(err).__name__}: {err}"


def _run_specs(
    specs: Sequence[CaseSpec], out: str | Path, workers: int
) -> Iterable[tuple[CaseSpec, dict[str, Any] | str]]:
    """Generate cases serially or in a process pool, yielding (spec, truth or error) as they finish."""
    if workers <= 1:
        for spec in specs:
            yield spec, _generate_and_write(spec, out)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_generate_and_write, spec, out): spec for spec in specs}
        for future in as_completed(futures):
            yield futures[future], future.result()
