"""Soft tissue and air around the spine: skin, fat, abdominal fat/organ mixture, lungs, muscles, vessels.

Painted first into the RAS working grid, chunk by chunk along z; the bone is drawn over it.
"""

from __future__ import annotations

import math

import numpy as np

from data.phantoms.geometry import Grid
from data.phantoms.layout import Body


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


def _coarse_field_xy(body: Body, x: np.ndarray, y: np.ndarray) -> np.ndarray:
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


def paint_background(body: Body, grid: Grid, hu: np.ndarray, chunk: int = 16) -> None:
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


