"""One vertebra of the phantom: dimensions, endplates, fracture height loss, regional heights, posterior elements.

A vertebra is a rigid implicit model in its local frame (``data.phantoms.geometry.Frame``):
origin at the centre of the healthy body, ``superior`` (u) along the spine's centre line,
``anterior`` (a) and ``left`` (l) = superior x anterior.

Body height (the truth file's ``height_pre_mm`` / ``height_post_mm``, docs/design.md,
'Phantom truth'): the distance along ``superior`` from the lower to the upper endplate surface (endplate
concavity included), on the mid-sagittal plane of the local frame (l = 0), at the centres of the
posterior, middle and anterior thirds of the body's antero-posterior extent [-D/2, D/2], i.e. at
a = -D/3, 0, +D/3 mm (``region_centres_mm``). A fracture scales the local height
``H_post(a, l) = H_pre(a, l) * (1 - loss(a, l))`` about the body's mid-surface; the loss ratio is
the largest of the three regional losses ``1 - post / pre`` and sets the Genant grade
(``evaluation.genant``). Morphologies: wedge (loss grows linearly towards the anterior wall;
posterior third intact), biconcave (loss deepest at the body centre), crush (85-100 % of the loss
everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.labels import spine_rank
from data.phantoms.geometry import Block, Element, Frame, box_corners, capsule
from data.phantoms.spec import CaseSpec, Fracture

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


@dataclass
class Vertebra:
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
    frame: Frame | None = None
    disc_above: float = 0.0

    @property
    def height(self) -> float:
        """Mean rim height (mm), the scale of the posterior elements."""
        return 0.5 * (self.height_post_rim + self.height_ant_rim)

    @property
    def canal_centre(self) -> float:
        """Anterior coordinate (mm) of the spinal canal's centre."""
        return -0.5 * self.depth - self.canal_ap - 0.5


def nominal_dimensions(label: int) -> dict[str, float]:
    """Nominal dimensions of a level (see ``_ANCHORS``), interpolated by spine rank."""
    rank = spine_rank(label)
    return {key: float(np.interp(rank, _ANCHOR_RANKS, values)) for key, values in _ANCHORS.items()}


def cross_section(v: Vertebra, a: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Normalised body cross-section coordinate (<= 1 inside; posterior wall flat at a = -D/2)."""
    shift = 0.125 * v.depth
    return ((a + shift) / (0.5 * v.depth + shift)) ** 2 + (left / (0.5 * v.width)) ** 2


def height_loss(v: Vertebra, a: np.ndarray, left: np.ndarray) -> np.ndarray:
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


def endplates(v: Vertebra, a: np.ndarray, left: np.ndarray, fractured: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower endplate surfaces u_top(a, l), u_bottom(a, l) in mm (concave, fracture applied)."""
    rim = v.height_post_rim + (v.height_ant_rim - v.height_post_rim) * (a + 0.5 * v.depth) / v.depth
    dip = np.clip(1.0 - (a / (0.5 * v.depth)) ** 2 - (left / (0.5 * v.width)) ** 2, 0.0, None)
    top = 0.5 * rim - v.concave_top * dip
    bottom = -0.5 * rim + v.concave_bottom * dip
    if not fractured or v.fracture is None:
        return top, bottom
    middle = 0.5 * (top + bottom)
    half = 0.5 * (top - bottom) * (1.0 - height_loss(v, a, left))
    return middle + half, middle - half


def region_centres_mm(depth_mm: float) -> dict[str, float]:
    """Anterior coordinate (mm, local frame) of the centre of each third of a body of depth ``depth_mm``."""
    return {"anterior": depth_mm / 3.0, "middle": 0.0, "posterior": -depth_mm / 3.0}


def regional_heights(v: Vertebra, fractured: bool) -> dict[str, float]:
    """Body heights (mm) at the three region centres on the mid-sagittal plane (see module docstring)."""
    heights = {}
    for region, a in region_centres_mm(v.depth).items():
        top, bottom = endplates(v, np.float32(a), np.float32(0.0), fractured)
        heights[region] = float(top - bottom)
    return heights


def body_extent(v: Vertebra) -> tuple[float, float]:
    """Highest upper and lowest lower endplate point (u, mm) of the drawn body."""
    a, left = np.meshgrid(np.linspace(-0.5 * v.depth, 0.5 * v.depth, 41),
                          np.linspace(-0.5 * v.width, 0.5 * v.width, 41))
    inside = cross_section(v, a, left) <= 1.0
    top, bottom = endplates(v, a.astype(np.float32), left.astype(np.float32))
    return float(top[inside].max()), float(bottom[inside].min())


def draw_vertebrae(spec: CaseSpec, rng: np.random.Generator) -> list[Vertebra]:
    """Per-level dimensions with a per-case size, ±5 % natural variation and the spec's fractures."""
    size = rng.uniform(0.9, 1.1)
    height_scale = size * rng.uniform(0.95, 1.05)
    bone_hu = rng.uniform(110.0, 230.0)
    vertebrae = []
    for label in spec.labels:
        nominal = nominal_dimensions(label)
        height = nominal["height"] * height_scale * (1.0 + 0.05 * np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))
        wedge = nominal["wedge_ratio"] * rng.uniform(0.98, 1.02)
        depth = nominal["depth"] * size * rng.uniform(0.97, 1.03)
        vertebrae.append(
            Vertebra(
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
    vertebrae[0].disc_above = nominal_dimensions(spec.labels[0])["disc"] * size
    return vertebrae


def posterior_elements(v: Vertebra) -> list[Element]:
    """Pedicles, lamina, spinous process, transverse processes and articular processes of one vertebra."""
    h, cc = v.height, v.canal_centre
    lateral = v.canal_lat + 0.5 * v.pedicle
    pedicle_front, pedicle_back = -0.5 * v.depth + 3.0, cc - 0.3 * v.canal_ap

    def pedicles(b: Block) -> np.ndarray:
        radial = np.sqrt(((np.abs(b.left) - lateral) / (0.5 * v.pedicle)) ** 2 + ((b.u - 0.12 * h) / (0.32 * h)) ** 2)
        return np.maximum(np.maximum((radial - 1.0) * 0.5 * v.pedicle, b.a - pedicle_front), pedicle_back - b.a)

    lamina_low, lamina_high = -0.5 * h - 0.3 * v.disc_below, 0.38 * h

    def lamina(b: Block) -> np.ndarray:
        outer = np.sqrt(((b.a - cc) / (v.canal_ap + v.lamina)) ** 2 + (b.left / (v.canal_lat + v.lamina)) ** 2)
        inner = np.sqrt(((b.a - cc) / v.canal_ap) ** 2 + (b.left / v.canal_lat) ** 2)
        ring = np.maximum((outer - 1.0) * v.lamina, (1.0 - inner) * v.canal_ap)
        return np.maximum(np.maximum(ring, b.a - cc), np.maximum(b.u - lamina_high, lamina_low - b.u))

    pedicle_box = ((-0.2 * h, pedicle_back, -lateral - v.pedicle), (0.44 * h, pedicle_front, lateral + v.pedicle))
    ring = (v.canal_ap + v.lamina, v.canal_lat + v.lamina)
    lamina_box = ((lamina_low, cc - ring[0], -ring[1]), (lamina_high, cc, ring[1]))
    elements = [Element(*pedicle_box, pedicles), Element(*lamina_box, lamina)]
    angle = math.radians(v.spinous_deg)
    root = (-0.05 * h, cc - v.canal_ap - v.lamina + 1.0, 0.0)
    tip = (root[0] - v.spinous_len * math.sin(angle), root[1] - v.spinous_len * math.cos(angle), 0.0)
    elements.append(capsule(root, tip, 0.25 * h, half_width=3.0))
    tp_angle = math.radians(20.0)
    for side in (-1.0, 1.0):
        tp_root = (0.1 * h, cc + 0.2 * v.canal_ap, side * (v.canal_lat + 0.8 * v.pedicle))
        tp_tip = (
            0.1 * h + 2.0, tp_root[1] - v.tp_len * math.sin(tp_angle), tp_root[2] + side * v.tp_len * math.cos(tp_angle)
        )
        elements.append(capsule(tp_root, tp_tip, 0.17 * h))
        sap_a, sap_l = cc - 0.35 * v.canal_ap, side * (v.canal_lat + 0.6 * v.pedicle)
        elements.append(capsule((0.1 * h, sap_a, sap_l), (0.5 * h + 0.45 * v.disc_above, sap_a, sap_l), 0.14 * h))
        iap_a, iap_l = cc - 0.8 * v.canal_ap, side * (v.canal_lat + 0.2 * v.pedicle)
        elements.append(capsule((-0.2 * h, iap_a, iap_l), (-0.5 * h - 0.45 * v.disc_below, iap_a, iap_l), 0.14 * h))
    return elements


def posterior_box(v: Vertebra) -> tuple[np.ndarray, np.ndarray]:
    """Local bounding box (u, a, l low/high, mm) of all posterior elements."""
    elements = posterior_elements(v)
    return np.min([e.low for e in elements], axis=0), np.max([e.high for e in elements], axis=0)


def vertebra_corners(v: Vertebra) -> np.ndarray:
    """RAS corners (16, 3) of the local boxes holding the body and the posterior elements."""
    low, high = posterior_box(v)
    reach = 0.5 * max(v.height_post_rim, v.height_ant_rim)
    body_low, body_high = (-reach, -0.5 * v.depth, -0.5 * v.width), (reach, 0.5 * v.depth, 0.5 * v.width)
    return v.frame.to_world(np.concatenate([box_corners(low, high), box_corners(body_low, body_high)]))

