"""Figures of the evaluation: height-loss distribution maps and confusion matrices (PNG, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data.planes import plane_axes
from evaluation.genant import GENANT_THRESHOLDS
from evaluation.rhlv import RHLVResult
from util.fileio import atomic_path

DEFAULT_MAP_VMAX = 0.6  # shared colour scale of every height-loss map: 0 .. 60 % loss


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    return path


def loss_curve(result: RHLVResult) -> np.ndarray:
    """Mean relative height loss per column of the plane over its central slices.

    Sagittal: one value per A->P column (crop axis 1); coronal: per R->L column (axis 2).
    NaN where no column was measured.
    """
    first, last = result.slab
    along = plane_axes(result.plane).axial_slice_axis
    block = np.take(result.loss_map, np.arange(first, last + 1), axis=along)
    measured = np.isfinite(block)
    sums = np.where(measured, block, 0.0).sum(axis=along)
    counts = measured.sum(axis=along)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def save_height_loss_map(result: RHLVResult, path: str | Path, title: str,
                         vmax: float = DEFAULT_MAP_VMAX, margin_voxels: int = 3) -> Path:
    """Write the axial map of relative height loss and the loss curve of one vertebra as a PNG.

    The map shows every measured (A->P, R->L) column, anterior at the top and right on
    the left as in radiological axial views; colours run from 0 to ``vmax`` for every
    vertebra so maps can be compared. The curve (same scale) is the loss along the
    plane's columns averaged over the central slices, with Genant's 20/25/40 % lines.
    """
    loss = result.loss_map
    measured = np.isfinite(loss)
    spacing = result.spacing_mm
    if measured.any():
        rows = np.flatnonzero(measured.any(axis=1))
        cols = np.flatnonzero(measured.any(axis=0))
        r0, r1 = max(rows[0] - margin_voxels, 0), min(rows[-1] + margin_voxels + 1, loss.shape[0])
        c0, c1 = max(cols[0] - margin_voxels, 0), min(cols[-1] + margin_voxels + 1, loss.shape[1])
    else:
        r0, r1, c0, c1 = 0, loss.shape[0], 0, loss.shape[1]
    view = np.ma.masked_invalid(loss[r0:r1, c0:c1])

    figure = Figure(figsize=(10, 4.2))
    map_axes, curve_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    colours = colormaps["inferno"].with_extremes(bad="0.85")
    extent = (c0 * spacing[2], c1 * spacing[2], r1 * spacing[1], r0 * spacing[1])
    image = map_axes.imshow(view, cmap=colours, vmin=0.0, vmax=vmax, extent=extent, interpolation="nearest")
    first, last = result.slab
    axes = plane_axes(result.plane)
    span = map_axes.axvspan if axes.slice_axis == 2 else map_axes.axhspan  # the map's x axis is R->L (crop axis 2)
    slice_mm = spacing[axes.slice_axis]
    span(first * slice_mm, (last + 1) * slice_mm, fill=False, edgecolor="cyan", linestyle="--")
    map_axes.set_xlabel("right \u2192 left (mm)")
    map_axes.set_ylabel("anterior \u2192 posterior (mm)")
    map_axes.set_title("axial height-loss map (dashed: measured slices)", fontsize=9)
    figure.colorbar(image, ax=map_axes, label="relative height loss")

    curve = loss_curve(result)
    step = spacing[axes.column_axis]
    positions = np.arange(curve.size) * step
    curve_axes.plot(positions, curve, color="black")
    for threshold in GENANT_THRESHOLDS:
        curve_axes.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
    finite = np.flatnonzero(np.isfinite(curve))
    if finite.size:
        curve_axes.set_xlim(positions[finite[0]] - step, positions[finite[-1]] + step)
    curve_axes.set_ylim(-0.1, vmax + 0.1)
    curve_axes.set_xlabel(f"{axes.column_direction} (mm)")
    curve_axes.set_ylabel("relative height loss")
    curve_axes.set_title("loss curve over the measured slices (dotted: Genant 20/25/40 %)", fontsize=9)
    scores = ", ".join(f"{region} {result.rhlv[region]:.2f}" for region in ("pre", "mid", "post"))
    figure.suptitle(f"{title}\nRHLV ({result.plane}, vs {result.reference}): {scores}", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


MATRIX_COLUMNS = 3  # panels per row: the PNG stays ~900 px wide, so digits stay readable when shown at page width
MATRIX_DIGIT_FONTSIZE = 13  # points at 100 dpi: ~18 px digits


def grading_confusion_panels(report: dict) -> tuple[list[np.ndarray], list[str]]:
    """Confusion matrices of a grading report with honest titles: one per fold (its val predictions),
    then their sum, which counts every val vertebra once per fold."""
    folds = report["folds"]
    matrices = [np.asarray(fold["confusion_matrix"]) for fold in folds]
    titles = [f"fold {fold['fold']}: val ({fold['n_val']} vertebrae)" for fold in folds]
    matrices.append(np.asarray(report["confusion_matrix_total"]))
    titles.append(f"sum of the {len(folds)} folds: each of the {report['n_val']} val\n"
                  f"vertebrae counted {len(folds)} times ({len(folds) * report['n_val']} predictions)")
    return matrices, titles


def save_confusion_matrices(matrices: Sequence[np.ndarray], titles: Sequence[str], classes: Sequence[int],
                            path: str | Path) -> Path:
    """Write confusion matrices (rows: true grade, columns: predicted grade) as a PNG grid of
    ``MATRIX_COLUMNS`` panels per row."""
    columns = min(MATRIX_COLUMNS, len(matrices))
    rows = -(-len(matrices) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.5 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axis in axes[len(matrices):]:
        axis.set_visible(False)
    for axis, matrix, title in zip(axes, matrices, titles):
        matrix = np.asarray(matrix)
        axis.imshow(matrix, cmap="Blues", vmin=0)
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(column, row, f"{count:g}", ha="center", va="center", color=colour,
                      fontsize=MATRIX_DIGIT_FONTSIZE)
        axis.set_xticks(range(len(classes)), [str(c) for c in classes])
        axis.set_yticks(range(len(classes)), [str(c) for c in classes])
        axis.set_xlabel("predicted grade")
        axis.set_ylabel("true grade")
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
