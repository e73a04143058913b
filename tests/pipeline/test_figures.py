"""pipeline/figures.py: the demo report's figures show the run's data on the expected axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from Attention.localisation import localise
from data.crops import load_crop
from data.image_io import save_nifti
from evaluation.phantom_truth import RHLV_COLUMN_OF_REGION, compare_to_truth, truth_table
from pipeline.figures import (
    attention_figure,
    attention_title,
    loss_figure,
    scatter_figure,
    synthesis_figure,
)
from pipeline.report_data import pick_examples
from pipeline.run import PipelineRun
from tests.pipeline.small_run import LOSS_TERMS


def _examples(run: PipelineRun):
    truth = truth_table(run.paths.raw)
    split = {"train": {}, "val": {}, "test": {}}
    for key, case in zip(truth["Vertebra"], truth["case"]):
        split[{"ph000": "train", "ph001": "val", "ph002": "test"}[case]][key] = 0
    return pick_examples(truth, split, truth["Vertebra"])


def test_scatter_points_are_the_true_loss_against_the_measured_rhlv(small_run: PipelineRun) -> None:
    truth = truth_table(small_run.paths.raw)
    comparisons = {m.method: compare_to_truth(pd.read_csv(m.rhlv), truth) for m in small_run.paths.methods}
    figure = scatter_figure(comparisons)
    assert len(figure.axes) == 2
    for axis, (method, table) in zip(figure.axes, comparisons.items()):
        assert axis.get_title().startswith(f"{method}: MAE ") and axis.get_title().endswith(f"(n={len(table)})")
        assert axis.get_xlabel() == "true height-loss ratio (phantom truth)"
        shown = np.concatenate([collection.get_offsets() for collection in axis.collections])
        expected = np.concatenate([table[[f"loss_{region}", column]].to_numpy(dtype=float)
                                   for region, column in RHLV_COLUMN_OF_REGION.items()])
        assert sorted(map(tuple, np.round(shown, 6))) == sorted(map(tuple, np.round(expected, 6)))
        adjacent = [c for c in axis.collections if c.get_label().endswith("(adjacent fracture)")]
        assert sum(len(c.get_offsets()) for c in adjacent) == 3 * int(table["adjacent_fracture"].sum())
    assert figure.axes[0].get_ylim() == figure.axes[1].get_ylim()


def test_loss_figure_plots_each_logged_term_against_iterations(small_run: PipelineRun) -> None:
    log = pd.read_csv(small_run.paths.loss_log)
    axis = loss_figure(small_run.paths.loss_log).axes[0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert set(lines) == set(LOSS_TERMS)
    for term, line in lines.items():
        np.testing.assert_allclose(line.get_xdata(), log["total_iters"])
        np.testing.assert_allclose(line.get_ydata(), log[term])
    assert axis.get_yscale() == "log" and axis.get_xlabel() == "iteration"
    assert loss_figure(small_run.paths.root / "missing.csv") is None


def test_attention_panels_show_the_localisation_of_each_example(small_run: PipelineRun, tmp_path: Path) -> None:
    examples = _examples(small_run)
    heatmaps = tmp_path / "heatmap"
    fractured_miss = next(i for i, e in enumerate(examples) if e.grade > 0)
    healthy_miss = next(i for i, e in enumerate(examples) if e.grade == 0)
    for number, example in enumerate(examples):  # two examples' maps point below the body
        crop = load_crop(small_run.paths.dataroot, example.key)
        cam = np.zeros(crop.label_map.shape, dtype=np.float32)
        if number in (fractured_miss, healthy_miss):
            cam[58:62] = 1.0  # rows far below the target (and the stray target voxels near row 2)
        else:
            cam[crop.label_map == crop.label] = 1.0
        save_nifti(cam, crop.affine, heatmaps / f"{example.key}.nii.gz")
    figure = attention_figure(small_run.paths.dataroot, heatmaps, examples)
    titles = [axis.get_title() for axis in figure.axes]
    assert len(titles) == 2 * len(examples)
    assert [t.split("\n")[0] for t in titles[::2]] == [e.title.split(", ")[0] for e in examples]  # CT on top
    attention = titles[1::2]
    assert attention[fractured_miss] == "attention max 1.00, peak off target\n0% on target  MISSES TARGET"
    assert attention[healthy_miss] == "attention max 1.00, peak off target\n0% on target"  # healthy: not flagged
    assert all("100% on target" in t and "MISSES" not in t for i, t in enumerate(attention)
               if i not in (fractured_miss, healthy_miss))


def test_attention_title_reports_the_localisation_measure() -> None:
    target = np.zeros((10, 10), dtype=bool)
    target[3:7, 3:7] = True
    cam = np.where(target, 0.6, 0.0)
    cam[0, 0] = 0.4  # outside the 2-pixel slack
    share = localise(cam, target).mass_share
    assert attention_title(cam, target) == (f"attention max 0.60, peak on target\n{100 * share:.0f}% on target")


def test_synthesis_rows_show_original_and_pseudo_healthy_slices(small_run: PipelineRun) -> None:
    examples = _examples(small_run)
    figure = synthesis_figure(small_run.paths.dataroot, small_run.paths.results, examples)
    assert len(figure.axes) == 4 * len(examples)
    first = load_crop(small_run.paths.dataroot, examples[0].key)
    z = first.ct_hu.shape[2] // 2
    shown = figure.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(shown, first.ct_hu[:, :, z])  # row 0 superior, anterior on the left
    assert [axis.get_title().split("\n")[-1] for axis in figure.axes[:4]] == [
        "original CT", "pseudo-healthy CT", "original labels", "pseudo-healthy labels"]
    assert synthesis_figure(small_run.paths.dataroot, small_run.paths.root / "none", examples) is None
