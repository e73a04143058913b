"""pipeline/report_data.py: the report's numbers are those of the run's files, computed here by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.report_data import demo_summary, load_report_data, pick_examples, summary_text
from pipeline.run import PipelineRun
from tests.pipeline.small_run import CASES, FRACTURES, LABELS


def _true_losses(run: PipelineRun) -> dict[str, tuple[float, float, float]]:
    losses = {}
    for case in CASES:
        truth = json.loads((run.paths.raw / case / f"{case}_truth.json").read_text(encoding="utf-8"))
        for vertebra in truth["vertebrae"]:
            losses[f"{case}_{vertebra['label']}"] = tuple(vertebra["loss_by_region"].values())
    return losses


def test_accuracy_is_the_mean_absolute_error_of_each_csv_against_the_truth(small_run: PipelineRun) -> None:
    summary = demo_summary(small_run)
    truth = _true_losses(small_run)
    for method in small_run.paths.methods:
        table = pd.read_csv(method.rhlv)
        errors = np.abs(table[["Pre RHLV", "Mid RHLV", "Post RHLV"]].to_numpy()
                        - np.array([truth[key] for key in table["Vertebra"]]))
        every = summary["accuracy"][method.method]["all"]
        assert every["n"] == len(table)
        assert [every["mae_anterior"], every["mae_middle"], every["mae_posterior"]] == pytest.approx(
            list(errors.mean(axis=0)))
    assert summary["accuracy"]["neighbour baseline"]["all"]["n"] == len(truth) - 1  # one vertebra not measured


def test_cohort_grading_and_generation_come_from_their_files(small_run: PipelineRun) -> None:
    summary = demo_summary(small_run)
    assert summary["cohort"] == {"cases": 3, "vertebrae": 3 * len(LABELS), "fractured": len(FRACTURES),
                                 "grades": {"0": 3 * len(LABELS) - 3, "1": 1, "2": 1, "3": 1},
                                 "adjacent_fracture": 6}
    grading = json.loads((small_run.paths.grading / "grading.json").read_text(encoding="utf-8"))
    assert summary["grading"]["HealthiVert-GAN"] == grading["mean"]
    assert summary["generation"] == {"PSNR": 27.5, "SSIM": 0.8125, "Dice": 0.9375} and summary["generation_n"] == 5
    assert [s["name"] for s in summary["steps"]] == [s.name for s in small_run.steps]
    assert summary["total_wall_s"] == 4.5 and summary["ok"]


def test_missing_artefacts_leave_gaps_not_errors(small_run: PipelineRun, tmp_path) -> None:
    empty = PipelineRun(small_run.config, type(small_run.paths)(tmp_path), "-1")
    data = load_report_data(empty)
    assert data.truth is None and data.comparisons == {} and data.generation is None
    assert data.grading == {"HealthiVert-GAN": None, "neighbour baseline": None}
    assert "cohort" not in demo_summary(empty, data)


def test_summary_text_prints_the_numbers(small_run: PipelineRun) -> None:
    summary = demo_summary(small_run)
    text = summary_text(small_run, summary, small_run.paths.report)
    every = summary["accuracy"]["HealthiVert-GAN"]["all"]
    errors = "/".join(f"{every[f'mae_{region}']:.3f}" for region in ("anterior", "middle", "posterior"))
    assert f"MAE ant/mid/post {errors}" in text
    assert "macro-P/R/F1 0.610/0.620/0.630, accuracy 0.640" in text
    assert f"report: {small_run.paths.report}" in text
    assert "cohort: 3 phantom cases, 18 vertebrae, 3 fractured (grades 0-3: 15, 1, 1, 1)" in text


def test_examples_prefer_unseen_interior_vertebrae_and_one_per_morphology(small_run: PipelineRun) -> None:
    data = load_report_data(small_run)
    examples = pick_examples(data.truth, data.split, data.truth["Vertebra"])
    by_morphology = {e.morphology: e for e in examples}
    assert list(by_morphology) == ["none", "wedge", "biconcave", "crush"]
    healthy = by_morphology["none"]
    assert healthy.split in ("val", "test") and healthy.grade == 0
    label = int(healthy.key.rsplit("_", 1)[1])
    assert min(LABELS) < label < max(LABELS)  # both neighbours in the scan
    adjacent = data.truth.set_index("Vertebra")["adjacent_fracture"]
    assert not adjacent[healthy.key]
    assert by_morphology["biconcave"].split == "train"  # the only biconcave fracture is in a train case
    assert by_morphology["wedge"].title == "ph001_20 (L1), grade 3, wedge, val"
