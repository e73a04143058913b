"""SVM Genant grading (docs/design.md, 'SVM grading'): fold protocol, metrics, warnings and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evaluation import SVM_grading
from evaluation.grading import (
    CORONAL_SUFFIX,
    GradingError,
    GradingSettings,
    GradingWarning,
    evaluate_grading,
    feature_table,
    grading_folds,
    prepare_grading_data,
)
from evaluation.rhlv import RHLV_COLUMNS, RHLV_FEATURES


def rhlv_table(per_class_pool: dict[int, int], per_class_val: dict[int, int], spread: float = 0.02,
               seed: int = 0) -> pd.DataFrame:
    """An RHLV table whose grades are separable: grade g has RHLVs near 0.05 + 0.15 g (pre > mid > post)."""
    rng = np.random.default_rng(seed)
    rows = []
    pool_splits = ("train", "test")
    for dataset, counts in (("pool", per_class_pool), ("val", per_class_val)):
        for grade, count in counts.items():
            for index in range(count):
                centre = 0.05 + 0.15 * grade
                pre, mid, post = centre + rng.normal(0, spread, 3) * [1, 1, 1] + [0.04, 0.0, -0.04]
                split = pool_splits[index % 2] if dataset == "pool" else "val"
                rows.append({"Vertebra": f"case{len(rows):04d}_{20 + grade}", "Label": grade, "Dataset": split,
                             "All RHLV": (pre + mid + post) / 3, "Pre RHLV": pre, "Mid RHLV": mid,
                             "Post RHLV": post, "Relative Height Label": 1 - pre})
    table = pd.DataFrame(rows)
    # Interleave the splits so that pool rows are not contiguous (catches label-based indexing bugs).
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_separable_classes_give_perfect_macro_f1() -> None:
    table = rhlv_table({0: 30, 1: 20, 2: 20, 3: 15}, {0: 10, 1: 8, 2: 8, 3: 6})
    data = prepare_grading_data(*feature_table(table))
    report = evaluate_grading(data)
    assert len(report["folds"]) == 5
    for fold in report["folds"]:
        assert fold["macro_f1"] == 1.0 and fold["accuracy"] == 1.0
        assert np.trace(fold["confusion_matrix"]) == 32
    assert report["mean"]["macro_f1"] == 1.0 and report["variance"]["macro_f1"] == 0.0
    assert set(report["mean"]) == set(report["variance"]) == {"macro_precision", "macro_recall", "macro_f1",
                                                              "accuracy"}


def test_folds_cross_validate_train_plus_test_and_score_on_val() -> None:
    table = rhlv_table({0: 25, 1: 10, 2: 10, 3: 10}, {0: 6, 1: 4, 2: 4, 3: 4})
    data = prepare_grading_data(*feature_table(table))
    pool_rows = table[table["Dataset"].isin(["train", "test"])]
    val_rows = table[table["Dataset"] == "val"]
    assert data.pool_keys.tolist() == pool_rows["Vertebra"].tolist()
    assert data.val_keys.tolist() == val_rows["Vertebra"].tolist()
    np.testing.assert_array_equal(data.val_x, val_rows[RHLV_FEATURES].to_numpy())
    np.testing.assert_array_equal(data.pool_y, pool_rows["Label"].to_numpy())

    folds = grading_folds(data.pool_y)
    heldout = np.concatenate([fold[1] for fold in folds])
    assert sorted(heldout.tolist()) == list(range(len(pool_rows)))  # each pool row held out exactly once
    for train, test in folds:
        assert np.intersect1d(train, test).size == 0
        assert train.size + test.size == len(pool_rows)
        # Stratified: every grade is in every training part.
        assert set(data.pool_y[train].tolist()) == {0, 1, 2, 3}

    report = evaluate_grading(data)
    for fold, (train, test) in zip(report["folds"], folds):
        assert fold["heldout_vertebrae"] == data.pool_keys[test].tolist()
        assert fold["n_train"] == train.size and fold["n_val"] == len(val_rows)
        assert sum(map(sum, fold["confusion_matrix"])) == len(val_rows)
        assert not set(fold["heldout_vertebrae"]) & set(val_rows["Vertebra"])


def test_grading_is_deterministic() -> None:
    table = rhlv_table({0: 20, 1: 12, 2: 12, 3: 10}, {0: 8, 1: 5, 2: 5, 3: 5}, spread=0.08)
    first = evaluate_grading(prepare_grading_data(*feature_table(table)))
    second = evaluate_grading(prepare_grading_data(*feature_table(table.copy())))
    assert json.dumps(first) == json.dumps(second)
    assert first["mean"]["macro_f1"] < 1.0  # overlapping classes: a real, non-trivial score


def test_small_class_warns_and_folds_still_run() -> None:
    table = rhlv_table({0: 20, 1: 10, 2: 10, 3: 3}, {0: 5, 1: 3, 2: 3, 3: 2})
    with pytest.warns(GradingWarning, match=r"fewer than 5 train/test vertebrae"):
        data = prepare_grading_data(*feature_table(table))
    assert len(evaluate_grading(data)["folds"]) == 5


def test_empty_class_and_missing_column_are_clear_errors() -> None:
    table = rhlv_table({0: 20, 1: 10, 2: 10}, {0: 5, 1: 3, 2: 3, 3: 2})
    with pytest.raises(GradingError, match=r"grade\(s\) \[3\] occur in val but have no train/test vertebra"):
        prepare_grading_data(*feature_table(table))
    with pytest.raises(GradingError, match=r"RHLV table: missing column\(s\) \['Mid RHLV'\]"):
        feature_table(table.drop(columns=["Mid RHLV"]))
    with pytest.raises(GradingError, match="no vertebra of the val split"):
        prepare_grading_data(*feature_table(table[table["Dataset"] != "val"]))


def test_coronal_table_adds_three_features() -> None:
    sagittal = rhlv_table({0: 20, 1: 10, 2: 10, 3: 10}, {0: 5, 1: 3, 2: 3, 3: 3})
    coronal = sagittal.copy()
    coronal[RHLV_FEATURES] = coronal[RHLV_FEATURES].to_numpy()[:, ::-1]
    with pytest.warns(GradingWarning, match="1 vertebrae are in only one of the sagittal and coronal tables"):
        table, features = feature_table(sagittal, coronal.iloc[1:])
    assert features == RHLV_FEATURES + [f + CORONAL_SUFFIX for f in RHLV_FEATURES]
    assert len(table) == len(sagittal) - 1
    row = table.iloc[0]
    assert row["Pre RHLV" + CORONAL_SUFFIX] == row["Post RHLV"]


def test_cli_writes_json_text_and_plot(tmp_path: Path, capsys) -> None:
    table = rhlv_table({0: 20, 1: 10, 2: 10, 3: 4}, {0: 5, 1: 3, 2: 3, 3: 2})
    for column in RHLV_COLUMNS[8:]:
        table[column] = 20.0
    csv = tmp_path / "rhlv.csv"
    table.to_csv(csv, index=False)
    out = tmp_path / "grading"
    assert SVM_grading.main(["--rhlv", str(csv), "--rhlv_coronal", str(csv), "--out", str(out)]) == 0
    report = json.loads((out / "grading.json").read_text(encoding="utf-8"))
    assert {"folds", "mean", "variance"} <= set(report)
    assert len(report["features"]) == 6 and report["mean"]["macro_f1"] == 1.0
    assert report["warnings"] and "fewer than 5" in report["warnings"][0]
    assert "warning: grade(s) {3: 4}" in capsys.readouterr().err
    assert "Mean over folds" in (out / "grading.txt").read_text(encoding="utf-8")
    panels = len(report["folds"]) + 1  # one per fold and their sum, 3 per row of 320 x 350 px
    with Image.open(out / "confusion_matrices.png") as png:
        assert png.format == "PNG" and png.size == (320 * min(panels, 3), 350 * -(-panels // 3))

    assert SVM_grading.main(["--rhlv", str(tmp_path / "missing.csv"), "--out", str(out)]) == 1
    assert "missing.csv: RHLV table not found" in capsys.readouterr().err


def test_grading_settings_from_the_flags_follow_the_protocol() -> None:
    """docs/design.md, 'SVM grading': 5 shuffled folds (seed 0) with a per-fold scaler; reference: neither."""
    parse = SVM_grading.build_parser().parse_args
    assert GradingSettings.from_options(parse([])) == GradingSettings(5, 0, True, True)
    reference = GradingSettings.from_options(parse(["--protocol", "reference", "--n_splits", "3", "--seed", "7"]))
    assert reference == GradingSettings(3, 7, False, False) and reference.protocol == "reference"
