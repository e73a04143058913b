"""Where the vertebrae sit: the spine's centre line, the vertebra frames along it, torso and organ layout, ribs.

The centre line is a smooth curve (lordosis, kyphosis, mild scoliosis) through the body centres,
in RAS mm, cranial to caudal. A neighbour of a fractured body keeps a normal disc to the body's
tallest remaining part (``place_vertebrae`` spaces the drawn bodies, not the healthy ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.labels import spine_rank
from data.phantoms.anatomy import Vertebra, body_extent, nominal_dimensions
from data.phantoms.geometry import Frame


@dataclass(frozen=True)
class CentreLine:
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


def draw_centre_line(vertebrae: list[Vertebra], rng: np.random.Generator) -> CentreLine:
    """A smooth curve x(t), y(t), z = -t: lordosis/kyphosis bumps at L3/T7/C4 and a sinusoidal scoliosis."""
    nominal_step = {lab: nominal_dimensions(lab)["height"] + nominal_dimensions(lab)["disc"] for lab in range(1, 26)}
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
    return CentreLine(points, arc - float(np.interp(120.0, t + 120.0, arc)))


def place_vertebrae(vertebrae: list[Vertebra], line: CentreLine, rng: np.random.Generator) -> None:
    """Set each vertebra's frame: origins along the centre line, bodies separated by their discs."""
    arc = 0.0
    rotation_per_mm = math.radians(rng.uniform(0.3, 0.6))
    for index, v in enumerate(vertebrae):
        if index:
            upper = vertebrae[index - 1]
            arc += -body_extent(upper)[1] + upper.disc_below + body_extent(v)[0]
        origin, caudal = line.at(arc)
        superior = -caudal
        anterior = np.array([0.0, 1.0, 0.0]) - superior[1] * superior
        anterior /= np.linalg.norm(anterior)
        left = np.cross(superior, anterior)
        angle = float(np.clip(rotation_per_mm * origin[0], -math.radians(5.0), math.radians(5.0)))
        cos, sin = math.cos(angle), math.sin(angle)
        anterior, left = cos * anterior + sin * left, cos * left - sin * anterior
        v.frame = Frame(origin, np.stack([superior, anterior, left]))


def rib_polylines(v: Vertebra, body: Body) -> list[np.ndarray]:
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


@dataclass(frozen=True)
class Body:
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


def draw_body(vertebrae: list[Vertebra], line: CentreLine, rng: np.random.Generator) -> Body:
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
    diaphragm_z = z_at_rank(19.6, ranks, centres_z)
    return Body(
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


def z_at_rank(rank: float, ranks: np.ndarray, centres_z: np.ndarray) -> float:
    """Height z (mm) of a spine rank, linearly inter-/extrapolated from the vertebra centres."""
    if len(ranks) < 2:
        return float(centres_z[0] + 25.0 * (ranks[0] - rank))
    slope, intercept = np.polyfit(ranks, centres_z, 1)
    if ranks[0] <= rank <= ranks[-1]:
        return float(np.interp(rank, ranks, centres_z))
    return float(slope * rank + intercept)

