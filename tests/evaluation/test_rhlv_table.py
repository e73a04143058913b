"""evaluation/rhlv_table.py: one row per vertebra with the RHLV columns, split order, failures, table files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.image_io import ImageIOError
from evaluation.rhlv import RHLV_COLUMNS
from evaluation.rhlv_table import list_jobs, read_table, rhlv_tables, split_in_file_order, write_table
from tests.evaluation.test_rhlv import HEIGHT, _write_cohort, true_regional_loss, wedge
from util.fileio import read_json


def test_tables_have_the_rhlv_columns_and_the_measured_values(tmp_path: Path) -> None:
    label_dir, fake_dir, split_path = _write_cohort(tmp_path)
    result = rhlv_tables(label_dir, fake_dir, read_json(split_path), ("synthesized", "neighbours"), progress=False)
    table = result.tables["synthesized"]
    assert list(table.columns) == RHLV_COLUMNS
    assert table["Vertebra"].tolist() == ["ph000_20"]  # 21: fake missing, 22: fake empty
    row = table.iloc[0]
    assert (row["Label"], row["Dataset"]) == (2, "train")  # the split's grade and split name
    truth = true_regional_loss(wedge(0.3))
    for region in ("pre", "mid", "post"):
        assert row[f"{region.capitalize()} RHLV"] == pytest.approx(truth[region], abs=0.02)
        assert row[f"H_syn_{region}_mm"] == pytest.approx(HEIGHT, abs=0.5)  # 1 mm voxels: the healthy height
        ratio = row[f"H_ori_{region}_mm"] / row[f"H_syn_{region}_mm"]
        assert row[f"{region.capitalize()} RHLV"] == pytest.approx(1 - ratio, abs=1e-6)
    assert [message.split(" ")[0] for message in result.failures["synthesized"]] == ["ph000_21", "ph000_22"]
    assert result.tables["neighbours"]["Vertebra"].tolist() == ["ph000_20", "ph000_21", "ph000_22"]
    assert result.failures["neighbours"] == []


def test_without_a_split_every_crop_is_measured_in_key_order(tmp_path: Path) -> None:
    label_dir, _, _ = _write_cohort(tmp_path)
    jobs = list_jobs(label_dir, None, None)
    assert [job.key for job in jobs] == ["ph000_20", "ph000_21", "ph000_22"]
    assert all(job.grade is None and job.dataset is None and job.fake_path is None for job in jobs)


def test_split_order_is_the_files_and_missing_crops_stop_the_run(tmp_path: Path) -> None:
    label_dir, fake_dir, _ = _write_cohort(tmp_path)
    path = tmp_path / "ordered.json"
    path.write_text('{"val": {"ph000_22": 0}, "train": {"ph000_21": 1, "ph000_20": 2}}', encoding="utf-8")
    split = split_in_file_order({"train": {"ph000_21": 1, "ph000_20": 2}, "val": {"ph000_22": 0}}, path)
    assert list(split) == ["val", "train"]
    jobs = list_jobs(label_dir, fake_dir, split)
    assert [(job.key, job.grade, job.dataset) for job in jobs] == [
        ("ph000_22", 0, "val"), ("ph000_21", 1, "train"), ("ph000_20", 2, "train")]
    assert jobs[0].fake_path == fake_dir / "ph000_22.nii.gz"
    with pytest.raises(Exception, match="ph000_99") as err:
        list_jobs(label_dir, fake_dir, {"train": {"ph000_99": 0}}, listed_in=path)
    assert str(path) in str(err.value)


def test_missing_folders_and_unknown_references_are_named(tmp_path: Path) -> None:
    label_dir, _, _ = _write_cohort(tmp_path)
    with pytest.raises(ImageIOError, match=f"^{tmp_path / 'absent'}: label crop folder not found$"):
        list_jobs(tmp_path / "absent", None, None)
    with pytest.raises(ImageIOError, match="synthesized label folder not found"):
        list_jobs(label_dir, tmp_path / "no_fakes", None)
    with pytest.raises(ValueError, match="unknown reference"):
        rhlv_tables(label_dir, None, None, ("sideways",), progress=False)


def test_written_tables_read_back_equal_as_csv_and_xlsx(tmp_path: Path) -> None:
    table = pd.DataFrame([["ph000_20", 2, "train", *np.linspace(0.1, 0.9, len(RHLV_COLUMNS) - 3)]],
                         columns=RHLV_COLUMNS)
    written = write_table(table, tmp_path / "rhlv.csv", xlsx=True)
    assert written == [tmp_path / "rhlv.csv", tmp_path / "rhlv.xlsx"]
    for path in written:
        pd.testing.assert_frame_equal(read_table(path), table, check_dtype=False)


def test_unreadable_tables_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'none.csv'}: RHLV table not found$"):
        read_table(tmp_path / "none.csv")
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"not a spreadsheet")
    with pytest.raises(ValueError, match=f"^{bad}: cannot read the RHLV table"):
        read_table(bad)
