"""evaluation/plots.py: the height-loss map and curve and the confusion panels show the data they are given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from evaluation import plots
from evaluation.genant import GENANT_THRESHOLDS
from evaluation.plots import grading_confusion_panels, loss_curve, save_confusion_matrices, save_height_loss_map
from evaluation.rhlv import RHLVResult


def result(plane: str = "sagittal") -> RHLVResult:
    """A (A->P 6, R->L 8) loss map with unmeasured NaN borders and a known value in every column."""
    loss = np.full((6, 8), np.nan)
    loss[1:5, 2:7] = np.arange(1, 5)[:, None] * 0.1 + np.arange(5)[None, :] * 0.01  # row r, col c: 0.1 r + 0.01 c
    return RHLVResult(label=20, relative_height_label=0.7, rhlv={"all": 0.2, "pre": 0.1, "mid": 0.2, "post": 0.3},
                      height_syn_mm={}, height_ori_mm={}, loss_map=loss, plane=plane,
                      reference="synthesized", slab=(3, 4), spacing_mm=(1.0, 0.5, 2.0))


def test_sagittal_curve_averages_the_central_r_l_slices_per_a_p_column() -> None:
    curve = loss_curve(result("sagittal"))
    loss = result().loss_map
    assert curve.shape == (6,)
    assert np.isnan(curve[[0, 5]]).all()  # no measured column in the first and last A->P rows
    assert curve[1:5] == pytest.approx(np.nanmean(loss[1:5, 3:5], axis=1))


def test_coronal_curve_averages_the_central_a_p_slices_per_r_l_column() -> None:
    curve = loss_curve(result("coronal"))
    loss = result().loss_map
    assert curve.shape == (8,)
    assert np.isnan(curve[[0, 1, 7]]).all()
    assert curve[2:7] == pytest.approx(np.nanmean(loss[3:5, 2:7], axis=0))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plotting functions save (the PNG is still written)."""
    figures: list[Figure] = []
    save = plots._save

    def keep(figure: Figure, path):
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_height_loss_map_shows_the_measured_crop_in_mm_and_the_curve(tmp_path: Path, captured) -> None:
    path = save_height_loss_map(result("sagittal"), tmp_path / "v.png", "ph000_20", vmax=0.5, margin_voxels=1)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 420)  # 10 x 4.2 in at 100 dpi
    figure = captured[0]
    map_axes, curve_axes = figure.axes[:2]
    image = map_axes.get_images()[0]
    expected = result().loss_map[0:6, 1:8]  # measured rows 1..4, columns 2..6, one voxel of margin
    shown = image.get_array()
    assert np.array_equal(shown.mask, np.isnan(expected))
    assert np.allclose(shown.filled(np.nan), expected, equal_nan=True)
    assert image.get_clim() == (0.0, 0.5)
    assert image.get_extent() == pytest.approx([1 * 2.0, 8 * 2.0, 6 * 0.5, 0 * 0.5])  # R->L x 2 mm, A->P x 0.5 mm
    assert map_axes.get_xlabel() == "right \u2192 left (mm)"
    assert map_axes.get_ylabel() == "anterior \u2192 posterior (mm)"
    line = curve_axes.get_lines()[0]
    assert np.allclose(line.get_xdata(), np.arange(6) * 0.5)  # A->P positions, 0.5 mm apart
    assert np.allclose(line.get_ydata(), loss_curve(result()), equal_nan=True)
    thresholds = sorted(float(line.get_ydata()[0]) for line in curve_axes.get_lines()[1:])
    assert thresholds == pytest.approx(sorted(GENANT_THRESHOLDS))
    assert curve_axes.get_xlim() == pytest.approx((0.5 - 0.5, 2.0 + 0.5))  # measured 0.5 .. 2.0 mm, one step margin
    assert "pre 0.10, mid 0.20, post 0.30" in figure.get_suptitle()


def test_confusion_panels_title_each_fold_and_count_the_sum_honestly() -> None:
    report = {"n_val": 5, "confusion_matrix_total": [[6, 1], [0, 3]],
              "folds": [{"fold": 1, "n_val": 5, "confusion_matrix": [[3, 1], [0, 1]]},
                        {"fold": 2, "n_val": 5, "confusion_matrix": [[3, 0], [0, 2]]}]}
    matrices, titles = grading_confusion_panels(report)
    assert [m.tolist() for m in matrices] == [[[3, 1], [0, 1]], [[3, 0], [0, 2]], [[6, 1], [0, 3]]]
    assert titles[:2] == ["fold 1: val (5 vertebrae)", "fold 2: val (5 vertebrae)"]
    assert titles[2] == "sum of the 2 folds: each of the 5 val\nvertebrae counted 2 times (10 predictions)"


def test_confusion_grid_writes_every_count_in_its_cell(tmp_path: Path, captured) -> None:
    matrices = [np.array([[3, 1, 0], [0, 2, 0], [1, 0, 4]]) * k for k in range(1, 5)]
    save_confusion_matrices(matrices, [f"m{k}" for k in range(4)], [0, 1, 3], tmp_path / "cm.png")
    figure = captured[0]
    visible = [axis for axis in figure.axes if axis.get_visible() and axis.get_images()]
    assert len(visible) == 4 and len(figure.axes) == 6  # 3 panels per row; the two spare ones hidden
    for axis, matrix, title in zip(visible, matrices, ["m0", "m1", "m2", "m3"]):
        assert np.array_equal(axis.get_images()[0].get_array(), matrix) and axis.get_title() == title
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axis.texts}
        assert cells == {(r, c): f"{matrix[r, c]:g}" for r in range(3) for c in range(3)}  # (true, predicted)
        assert [t.get_text() for t in axis.get_xticklabels()] == ["0", "1", "3"]
        assert axis.get_xlabel() == "predicted grade" and axis.get_ylabel() == "true grade"
