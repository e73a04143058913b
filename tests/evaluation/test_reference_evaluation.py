"""RHLV and SVM grading under --protocol reference: the published code's rules, and its golden numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from benchmarks.reference_equivalence_evaluation import check_rhlv, check_svm, compare_rhlv_table, compare_svm
from evaluation import RHLV_quantification, SVM_grading, generation_eval_sagittal
from evaluation.grading import evaluate_grading, feature_table, grading_folds, prepare_grading_data
from evaluation.rhlv import MeasureOptions, central_slab, measure_columns, plane_heights, rhlv_for_vertebra
from evaluation.rhlv_reference import (
    published_columns,
    published_slab,
    published_thirds,
    rhlv_reference_for_vertebra,
)
from evaluation.rhlv_table import rhlv_tables, split_in_file_order
from tests.paths import REFERENCE_DIR
from util.fileio import write_json

SHAPE = (64, 40, 32)  # (S->I, A->P, R->L)
TARGET = 20


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not (REFERENCE_DIR / "rhlv").is_dir() or not (REFERENCE_DIR / "svm").is_dir():
        pytest.skip(f"reference fixtures not available at {REFERENCE_DIR}")
    return REFERENCE_DIR


def body(column_heights: np.ndarray, first_column: int, slices: range, top: int = 20) -> np.ndarray:
    """Label crop with a body whose A->P columns from ``first_column`` have the given heights in ``slices``."""
    label_map = np.zeros(SHAPE, dtype=np.int16)
    for offset, height in enumerate(column_heights):
        label_map[top: top + int(height), first_column + offset, slices.start: slices.stop] = TARGET
    return label_map


# --- golden data ------------------------------------------------------------------------------------------------

def test_rhlv_reproduces_the_published_tables(fixtures: Path) -> None:
    rows = check_rhlv(fixtures)
    assert len(rows) >= 8 and all(row["passed"] for row in rows), [r for r in rows if not r["passed"]]
    thresholds = {row["item"].split(":")[0] for row in rows}
    assert thresholds == {"RHLV threshold 0.64", "RHLV threshold 0.7"}


def test_svm_reproduces_the_published_metrics(fixtures: Path) -> None:
    rows = check_svm(fixtures)
    expected_folds = len(json.loads((fixtures / "svm" / "svm.json").read_text(encoding="utf-8"))["folds"])
    assert sum(row["item"].endswith("confusion matrix") for row in rows) == expected_folds
    assert all(row["passed"] for row in rows), [r for r in rows if not r["passed"]]


@pytest.mark.slow
def test_healthivert_protocol_differs_from_the_published_numbers(fixtures: Path) -> None:
    """The checks can fail: our default protocol does not reproduce the published values."""
    folder = fixtures / "rhlv"
    info_path = folder / "dataset_info.json"
    split = split_in_file_order(json.loads(info_path.read_text(encoding="utf-8")), info_path)
    ours = rhlv_tables(folder / "label", folder / "label_fake", split, ("synthesized",), MeasureOptions(),
                       progress=False).tables["synthesized"]
    rows = compare_rhlv_table(ours, pd.read_csv(folder / "rhlv_threshold_0.7.csv"), "healthivert")
    numeric = [row for row in rows if "number columns" in row["item"]]
    assert len(numeric) == 1 and not numeric[0]["passed"] and numeric[0]["difference"] > 1e-3
    assert all(row["passed"] for row in rows if row["item"].endswith(("Vertebra", "Label", "Dataset")))

    table, features = feature_table(pd.read_csv(fixtures / "svm" / "rhlv_table.csv"))
    report = evaluate_grading(prepare_grading_data(table, features), 5, 0, "healthivert")
    recorded = json.loads((fixtures / "svm" / "svm.json").read_text(encoding="utf-8"))
    assert not all(row["passed"] for row in compare_svm(report, recorded))


def test_rhlv_comparison_uses_the_1e9_tolerance(fixtures: Path) -> None:
    theirs = pd.read_csv(fixtures / "rhlv" / "rhlv_threshold_0.7.csv")
    for step, passes in ((1e-10, True), (1e-8, False)):
        ours = theirs.copy()
        ours.loc[ours.index[-1], "Mid RHLV"] += step
        numeric = [r for r in compare_rhlv_table(ours, theirs, "t") if "number columns" in r["item"]]
        assert numeric[0]["passed"] is passes
    renamed = theirs.copy()
    renamed.loc[0, "Dataset"] = "val"
    assert not all(row["passed"] for row in compare_rhlv_table(renamed, theirs, "t"))


@pytest.mark.slow
def test_checks_follow_the_files_of_another_fixture_set(fixtures: Path, tmp_path: Path) -> None:
    """A subset in the same format passes; one changed recorded value fails; nothing of the set is built in."""
    import shutil
    subset = tmp_path / "fixtures"
    (subset / "rhlv").mkdir(parents=True)
    shutil.copytree(fixtures / "svm", subset / "svm")
    info = json.loads((fixtures / "rhlv" / "dataset_info.json").read_text(encoding="utf-8"))
    keep = {split: dict(list(entries.items())[::2]) for split, entries in info.items()}
    write_json(subset / "rhlv" / "dataset_info.json", keep)
    kept = [key for entries in keep.values() for key in entries]
    for folder in ("label", "label_fake"):
        (subset / "rhlv" / folder).mkdir()
        for key in kept:
            shutil.copy(fixtures / "rhlv" / folder / f"{key}.nii.gz", subset / "rhlv" / folder)
    table = pd.read_csv(fixtures / "rhlv" / "rhlv_threshold_0.64.csv")
    table = table[table["Vertebra"].isin(kept)]
    table.to_csv(subset / "rhlv" / "rhlv_threshold_0.64.csv", index=False, float_format="%.17g")
    rows = check_rhlv(subset)
    assert all(row["passed"] for row in rows) and {row["item"].split(":")[0] for row in rows} == {"RHLV threshold 0.64"}
    assert any(f"x {len(kept)} rows" in row["item"] for row in rows)
    table.loc[table.index[0], "Post RHLV"] += 1e-6
    table.to_csv(subset / "rhlv" / "rhlv_threshold_0.64.csv", index=False, float_format="%.17g")
    assert not all(row["passed"] for row in check_rhlv(subset))
    recorded = json.loads((subset / "svm" / "svm.json").read_text(encoding="utf-8"))
    recorded["folds"][2]["val_predictions"][0] = 3 - recorded["folds"][2]["val_predictions"][0]
    write_json(subset / "svm" / "svm.json", recorded)
    failed = [row["item"] for row in check_svm(subset) if not row["passed"]]
    assert failed == ["SVM fold 3: val predictions"]


# --- the published rule on hand-made label volumes --------------------------------------------------------------

def test_third_boundaries_are_int_of_the_extent_not_balanced() -> None:
    assert published_thirds(10, 20) == (13, 16)  # int(10 + 10/3), int(10 + 20/3)
    heights = np.zeros((1, 40))
    heights[0, 10:21] = 20.0  # 11 columns 10..20
    published = published_columns(heights, heights, 0.7).region[0]
    balanced = measure_columns(heights, heights, 0.7).region[0]
    assert published[12] == 0 and published[13] == 1 and published[15] == 1 and published[16] == 2
    assert published[:10].tolist() == [0] * 10 and published[21:].tolist() == [2] * 19  # outside: pre / post
    assert balanced[13] == 0 and balanced[14] == 1 and balanced[17] == 2  # 4 / 3 / 4 columns


def test_slice_range_is_half_open_around_the_int_mean_slice() -> None:
    label_map = body(np.full(20, 20), 10, range(10, 30))  # slices 10..29: centre int(19.5) = 19, n = 19 // 5 = 3
    heights = plane_heights(label_map.astype(bool).sum(axis=0), "sagittal")
    assert published_slab(heights, 5) == (16, 22)  # slices 16..21
    assert central_slab(heights, 5) == (16, 22)  # ours: inclusive, slices 16..22
    assert rhlv_reference_for_vertebra(label_map, label_map, TARGET).slab == (16, 21)
    assert rhlv_for_vertebra(label_map, label_map, TARGET).slab == (16, 22)


def test_each_body_is_thresholded_against_its_own_centre_column() -> None:
    """An anterior collapse below 0.7 x the centre drops out of the published mean; ours measures it."""
    slices = range(8, 24)
    healthy = body(np.full(20, 20), 10, slices)  # columns 10..29, 20 rows
    collapsed = body(np.r_[np.full(3, 8), np.full(17, 20)], 10, slices)  # columns 10..12 at 8 rows
    published = rhlv_reference_for_vertebra(collapsed, healthy, TARGET)
    ours = rhlv_for_vertebra(collapsed, healthy, TARGET)
    # published pre third: columns 10..15; the original keeps only 13..15 (20 rows), the synthesized all six.
    assert published.rhlv["pre"] == pytest.approx(0.0, abs=1e-6)
    # ours: the synthesized body's footprint, pre third 10..16: (3 x 8 + 4 x 20) / 7 rows against 20.
    assert ours.rhlv["pre"] == pytest.approx(1 - (3 * 8 + 4 * 20) / 7 / 20, abs=1e-9)
    assert published.rhlv["post"] == pytest.approx(0.0, abs=1e-6)


def test_threshold_is_strict_and_ratios_carry_the_published_epsilon() -> None:
    slices = range(8, 24)
    heights = np.r_[np.full(2, 14), np.full(18, 20)]  # 14 == 0.7 x 20: dropped by ">" (kept by ours)
    label_map = body(heights, 10, slices)
    columns = published_columns(plane_heights(label_map.astype(bool).sum(axis=0), "sagittal"),
                                plane_heights(label_map.astype(bool).sum(axis=0), "sagittal"), 0.7)
    assert not columns.keep_original[slices.start, 10] and columns.keep_original[slices.start, 12]
    taller = body(np.full(20, 22), 10, slices)  # original taller than the synthesized: scaled by 22 / (20 + 1e-6)
    result = rhlv_reference_for_vertebra(taller, body(np.full(20, 20), 10, slices), TARGET)
    assert result.height_syn_mm["all"] == pytest.approx(20 * 22 / (20 + 1e-6), rel=1e-12)
    synthesized = result.height_syn_mm["all"]
    assert result.rhlv["all"] == pytest.approx((synthesized - 22) / (synthesized + 1e-6), rel=1e-12)


def test_coronal_reference_uses_coronal_slices_and_no_ratio_epsilon() -> None:
    """The published coronal script: slices [:, y, :], columns R->L, scale ratio max / max."""
    label_map = body(np.full(20, 20), 10, range(8, 24))
    taller = body(np.full(20, 22), 10, range(8, 24))
    result = rhlv_reference_for_vertebra(taller, label_map, TARGET, plane="coronal")
    assert result.height_syn_mm["all"] == 22.0  # 20 x 22 / 20 exactly
    # coronal slices run along A->P (columns 10..29): centre int(19.5) = 19, n = 19 // 5 = 3 -> 16..21
    assert result.slab == (16, 21)
    assert rhlv_reference_for_vertebra(taller, label_map, TARGET).height_syn_mm["all"] != 22.0


def test_reference_rhlv_keeps_islands_and_errors_without_overlap() -> None:
    slices = range(8, 24)  # 20 x 20 x 16 = 6400 voxels
    label_map = body(np.full(20, 20), 10, slices)
    with_island = label_map.copy()
    with_island[20:35, 0:20, 31] = TARGET  # 300 voxels (4.7 %), detached, in slice 31
    # published: centre int((6400 x 15.5 + 300 x 31) / 6700) = 16, n = (31 - 8) // 5 = 4 -> slices 12..19
    assert rhlv_reference_for_vertebra(with_island, with_island, TARGET).slab == (12, 19)
    assert rhlv_reference_for_vertebra(label_map, label_map, TARGET).slab == (12, 17)
    assert rhlv_for_vertebra(with_island, with_island, TARGET).slab == (12, 18)  # ours drops the island
    elsewhere = body(np.full(20, 20), 10, range(26, 30))
    with pytest.raises(ValueError, match="no slice"):
        rhlv_reference_for_vertebra(label_map, elsewhere, TARGET)


# --- grading protocol -------------------------------------------------------------------------------------------

def grading_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in (("test", 40), ("train", 60), ("val", 40)):
        for index in range(count):
            grade = int(rng.choice(4, p=[0.55, 0.2, 0.15, 0.1]))
            loss = 0.1 * grade + rng.normal(0, 0.05, 3)
            rows.append({"Vertebra": f"{split}{index:03d}_20", "Label": grade, "Dataset": split,
                         "Pre RHLV": loss[0], "Mid RHLV": loss[1], "Post RHLV": loss[2]})
    return pd.DataFrame(rows)


def test_reference_folds_keep_table_order_and_ignore_the_seed() -> None:
    y = np.array([0] * 10 + [1] * 5)
    for seed in (0, 1):
        folds = grading_folds(y, 5, seed, shuffle=False)
        assert folds[0][1].tolist() == [0, 1, 10]  # the first rows of each grade are held out first
    assert grading_folds(y, 5, 0)[0][1].tolist() != grading_folds(y, 5, 1)[0][1].tolist()


def test_reference_scaler_is_fitted_once_on_the_pool() -> None:
    table, features = feature_table(grading_table())
    data = prepare_grading_data(table, features)
    report = evaluate_grading(data, 5, 0, "reference")
    scaler = StandardScaler().fit(data.pool_x)  # the published code: one scaler on train + test
    pool, val = scaler.transform(data.pool_x), scaler.transform(data.val_x)
    for fold in report["folds"]:
        train = np.asarray(fold["train_positions"])
        svc = SVC(kernel="linear", class_weight="balanced").fit(pool[train], data.pool_y[train])
        assert fold["val_predictions"] == svc.predict(val).tolist()
    assert report["protocol"] == "reference" and report["val_labels"] == data.val_y.tolist()


# --- command lines ----------------------------------------------------------------------------------------------

def test_split_rows_follow_the_json_order(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    write_json(path, {"test": {"a_20": 0}, "train": {"b_20": 1}})
    assert list(split_in_file_order({"train": {"b_20": 1}, "val": {}, "test": {"a_20": 0}}, path)) == \
        ["test", "train", "val"]


def test_clis_without_flags_name_the_missing_default(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert RHLV_quantification.main([]) == 2
    assert "./dataset/straightened/label: folder not found; give --label_dir" in capsys.readouterr().err
    assert SVM_grading.main([]) == 1
    assert "give --rhlv" in capsys.readouterr().err
    assert generation_eval_sagittal.main([]) == 2
    assert "./dataset/straightened: not found; give --dataroot" in capsys.readouterr().err
    (tmp_path / "dataset" / "straightened" / "label").mkdir(parents=True)
    assert RHLV_quantification.main(["--protocol", "reference", "--reference", "neighbours"]) == 2
    assert "--protocol healthivert" in capsys.readouterr().err


def test_clis_without_flags_run_on_the_published_layout(tmp_path: Path, monkeypatch, capsys) -> None:
    from data.crops import crop_affine
    from data.image_io import save_nifti
    monkeypatch.chdir(tmp_path)
    slices = range(8, 24)
    affine = crop_affine(1.0, np.zeros(3), SHAPE)
    grades = {}
    rng = np.random.default_rng(0)
    for index in range(40):
        loss = index % 4
        healthy = body(np.full(20, 24), 10, slices)
        original = body(np.r_[np.full(6, 24 - 3 * loss), np.full(14, 24 - loss)], 10, slices)
        ct = np.where(original > 0, 300.0, 0.0) + rng.normal(0, 20, SHAPE)
        key = f"c{index:02d}_{TARGET}"
        save_nifti(original.astype(np.uint8), affine, tmp_path / "dataset/straightened/label" / f"{key}.nii.gz")
        save_nifti(ct.astype(np.int16), affine, tmp_path / "dataset/straightened/CT" / f"{key}.nii.gz")
        save_nifti(healthy.astype(np.uint8), affine, tmp_path / "output/label_fake" / f"{key}.nii.gz")
        fake_ct = (ct + rng.normal(0, 20, SHAPE)).astype(np.int16)
        save_nifti(fake_ct, affine, tmp_path / "output/CT_fake" / f"{key}.nii.gz")
        grades[key] = loss
    keys = sorted(grades)
    write_json(tmp_path / "vertebra_data.json", {"train": {k: grades[k] for k in keys[:20]},
                                                  "val": {k: grades[k] for k in keys[20:30]},
                                                  "test": {k: grades[k] for k in keys[30:]}})
    assert RHLV_quantification.main(["--workers", "1"]) == 0
    table = pd.read_csv(tmp_path / "evaluation/RHLV_quantification/rhlv.csv")
    assert len(table) == 40 and set(table["Dataset"]) == {"train", "val", "test"}
    assert SVM_grading.main([]) == 0
    report = json.loads((tmp_path / "evaluation/classification_metric/grading.json").read_text(encoding="utf-8"))
    assert report["n_pool"] == 30 and report["n_val"] == 10
    assert generation_eval_sagittal.main([]) == 0
    generation = pd.read_csv(tmp_path / "evaluation/generation_metric/generation_sagittal.csv")
    assert sorted(generation["Vertebra"]) == [k for k in keys[20:30] if grades[k] == 0]
