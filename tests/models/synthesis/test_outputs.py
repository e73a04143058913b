"""A run's output folders, key selection, sharding and summary (models/synthesis/outputs.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from models.synthesis.outputs import SynthesisSummary, output_layouts, select_keys, shard, synthesis_dir
from util.fileio import write_json


def test_output_folder_is_output_dir_else_results_dir_and_name(tmp_path: Path) -> None:
    given = argparse.Namespace(output_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "R"), name="N")
    assert synthesis_dir(given) == tmp_path / "out"
    assert synthesis_dir(argparse.Namespace(results_dir=str(tmp_path / "R"), name="N")) == tmp_path / "R" / "N"
    assert synthesis_dir({"results_dir": "R", "name": "N", "output_dir": ""}) == Path("R") / "N"  # empty: not given
    assert synthesis_dir({"output_dir": "O"}) == Path("O")  # no --results_dir/--name needed then
    with pytest.raises(ValueError, match="--results_dir and --name"):
        synthesis_dir(argparse.Namespace(name="N"))


def test_plane_both_writes_sagittal_at_the_root_coronal_and_fused_below(tmp_path: Path) -> None:
    layouts = output_layouts(tmp_path, "both")
    assert layouts["sagittal"].ct("c_20") == tmp_path / "CT_fake" / "c_20.nii.gz"
    assert layouts["coronal"].label("c_20") == tmp_path / "coronal" / "label_fake" / "c_20.nii.gz"
    assert layouts["fused"].record("c_20") == tmp_path / "fused" / "provenance" / "c_20.json"
    assert {plane: layout.root for plane, layout in output_layouts(tmp_path, "coronal").items()} == \
        {"coronal": tmp_path}
    with pytest.raises(ValueError, match="--plane 'axial'"):
        output_layouts(tmp_path, "axial")


def test_keys_are_every_label_crop_or_the_named_splits(tmp_path: Path) -> None:
    dataroot = tmp_path / "straightened"
    (dataroot / "label").mkdir(parents=True)
    for key in ("a_19", "a_20", "b_21"):
        (dataroot / "label" / f"{key}.nii.gz").write_bytes(b"")
    write_json(tmp_path / "vertebra_data.json", {"train": {"a_19": 0}, "val": {"a_20": 1, "x_22": 0},
                                                 "test": {"b_21": 3}})
    assert select_keys(dataroot, None, None) == select_keys(dataroot, "all", None) == ["a_19", "a_20", "b_21"]
    assert select_keys(dataroot, "val, test", None) == ["a_20", "b_21", "x_22"]  # x_22 is refused later
    with pytest.raises(ValueError, match="unknown split"):
        select_keys(dataroot, "validation", None)


def test_shard_partitions_keys() -> None:
    keys = [f"c_{i}" for i in range(7)]
    shards = [shard(keys, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == sorted(keys)
    assert shards[0] == ["c_0", "c_3", "c_6"]


def test_summaries_of_ranks_merge_and_report_failures() -> None:
    first = SynthesisSummary(succeeded=["a_20"], skipped=["a_19"], seconds=3.0)
    second = SynthesisSummary(succeeded=["b_21"], failed={"b_22": "bad label"}, missing_attention=["b_21"], seconds=5.0)
    first.merge(second)
    assert not first.ok and first.seconds == 5.0  # ranks run in parallel: the slowest one
    assert first.as_dict() == {"succeeded": ["a_20", "b_21"], "skipped": ["a_19"], "redone": [],
                               "failed": {"b_22": "bad label"}, "missing_attention": ["b_21"], "seconds": 5.0}
    report = first.report().splitlines()
    assert report[0].startswith("synthesis: 2 succeeded, 1 skipped (already done), 1 failed")
    assert "  FAILED b_22: bad label" in report
