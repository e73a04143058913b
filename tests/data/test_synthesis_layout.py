"""Synthesis output layout (data/synthesis_layout.py): paths, int16/uint8 volumes, provenance-based resume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from data.synthesis_layout import OutputLayout
from util.fileio import read_json

AFFINE = np.diag([0.8, 1.0, 1.2, 1.0])


def test_paths_are_ct_fake_label_fake_and_provenance(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    assert layout.ct("s01_20") == tmp_path / "CT_fake" / "s01_20.nii.gz" == layout.ct_dir / "s01_20.nii.gz"
    assert layout.label("s01_20") == tmp_path / "label_fake" / "s01_20.nii.gz" == layout.label_dir / "s01_20.nii.gz"
    assert layout.record("s01_20") == tmp_path / "provenance" / "s01_20.json"


def test_write_rounds_hu_to_int16_on_the_crop_grid_and_records_provenance(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    layout.prepare()
    ct = np.array([[[-1000.4, 0.6], [40000.0, -40000.0]]], dtype=np.float32)
    labels = np.array([[[20, 0], [19, 21]]], dtype=np.int64)
    layout.write("s01_20", ct, labels, AFFINE, {"checkpoint": "a"})
    ct_image, label_image = nib.load(layout.ct("s01_20")), nib.load(layout.label("s01_20"))
    assert ct_image.get_data_dtype() == np.int16 and label_image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(ct_image.dataobj), [[[-1000, 1], [32767, -32768]]])
    np.testing.assert_array_equal(np.asanyarray(label_image.dataobj), labels)
    np.testing.assert_allclose(ct_image.affine, AFFINE)
    assert read_json(layout.record("s01_20")) == {"checkpoint": "a"}


def test_done_only_when_both_volumes_exist_and_the_provenance_matches(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    layout.prepare()
    volume = np.zeros((2, 2, 2), np.float32)
    assert not layout.exists("k_20") and not layout.done("k_20", {"checkpoint": "a"})
    layout.write("k_20", volume, volume, AFFINE, {"checkpoint": "a"})
    assert layout.done("k_20", {"checkpoint": "a"})
    assert layout.exists("k_20") and not layout.done("k_20", {"checkpoint": "b"})
    layout.record("k_20").write_text("{not json", encoding="utf-8")
    assert not layout.done("k_20", {"checkpoint": "a"})
    layout.label("k_20").unlink()
    assert not layout.exists("k_20")
