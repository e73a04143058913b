"""Saved Genant grader (skops) and grading of a table without labels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation import SVM_grading, grade
from evaluation.genant import GENANT_THRESHOLDS, genant_grade, suggested_morphology
from evaluation.grader import fit_grader, grade_features, load_grader, save_grader
from evaluation.grading import GradingError, feature_table, make_classifier, prepare_grading_data
from tests.evaluation.test_grading import rhlv_table


def test_save_load_round_trip_gives_identical_predictions_and_scores(tmp_path: Path) -> None:
    table = rhlv_table({0: 30, 1: 20, 2: 20, 3: 15}, {0: 10, 1: 8, 2: 8, 3: 6}, spread=0.05)
    data = prepare_grading_data(*feature_table(table))
    grader = fit_grader(data, "healthivert")
    loaded = load_grader(save_grader(grader, tmp_path / "grader.skops"))
    assert loaded.features == ["Pre RHLV", "Mid RHLV", "Post RHLV"] and loaded.classes == [0, 1, 2, 3]
    assert loaded.protocol == "healthivert" and loaded.n_train == data.pool_y.size
    before, after = grade_features(grader, table), grade_features(loaded, table)
    pd.testing.assert_frame_equal(before, after)
    # the final model is the CV's classifier fitted on the pool: same predictions as a fresh fit
    reference = make_classifier().fit(data.pool_x, data.pool_y)
    assert np.array_equal(after["Predicted grade"].to_numpy(), reference.predict(table[grader.features].to_numpy()))
    # the highest one-vs-rest score is the predicted grade
    scores = after[[f"score_grade_{g}" for g in loaded.classes]].to_numpy()
    assert np.array_equal(np.array(loaded.classes)[scores.argmax(axis=1)], after["Predicted grade"].to_numpy())


def test_cli_saves_grader_and_grade_py_grades_a_table_without_labels(tmp_path: Path) -> None:
    table = rhlv_table({0: 30, 1: 20, 2: 20, 3: 15}, {0: 10, 1: 8, 2: 8, 3: 6})
    table.to_csv(tmp_path / "rhlv.csv", index=False)
    grader_path = tmp_path / "grader.skops"
    assert SVM_grading.main(["--rhlv", str(tmp_path / "rhlv.csv"), "--out", str(tmp_path / "grading"),
                             "--save_grader", str(grader_path)]) == 0
    unlabelled = table.drop(columns=["Label", "Dataset"])
    unlabelled.loc[0, "Mid RHLV"] = np.nan
    unlabelled.to_csv(tmp_path / "new.csv", index=False)
    assert grade.main(["--rhlv", str(tmp_path / "new.csv"), "--grader", str(grader_path),
                       "--out", str(tmp_path / "grades.csv")]) == 0
    grades = pd.read_csv(tmp_path / "grades.csv")
    assert np.isnan(grades.loc[0, "Predicted grade"])
    # separable grades: every complete row gets its true grade
    assert np.array_equal(grades["Predicted grade"].to_numpy()[1:], table["Label"].to_numpy()[1:])


def test_foreign_or_missing_grader_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(GradingError, match="grader file not found"):
        load_grader(tmp_path / "absent.skops")
    foreign = tmp_path / "foreign.skops"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("schema.json", "{}")
    with pytest.raises(GradingError, match=str(foreign)):
        load_grader(foreign)
    table = rhlv_table({0: 10, 1: 10}, {0: 4, 1: 4})
    grader = fit_grader(prepare_grading_data(*feature_table(table), n_splits=2))
    with pytest.raises(GradingError, match="missing feature column"):
        grade_features(grader, table.drop(columns=["Post RHLV"]))


@pytest.mark.parametrize("loss, grade_, morphology", [
    ((0.10, 0.05, 0.02), 0, "none"), ((0.22, 0.10, 0.02), 1, "wedge"), ((0.10, 0.30, 0.05), 2, "biconcave"),
    ((0.45, 0.44, 0.42), 3, "crush"), ((0.05, 0.10, 0.30), 2, "crush"),
])
def test_genant_grade_and_suggested_morphology(loss: tuple[float, float, float], grade_: int, morphology: str) -> None:
    assert GENANT_THRESHOLDS == (0.20, 0.25, 0.40)
    assert genant_grade(max(loss)) == grade_
    assert suggested_morphology(dict(zip(("anterior", "middle", "posterior"), loss)), grade_) == morphology
