"""Vertebra labels, connected components and the crop/split contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.crops import crop_affine, list_crop_keys, load_crop, read_split, split_of, write_crop
from data.image_io import ImageIOError, axis_codes, voxel_spacing, voxel_to_world
from data.labels import parse_key, spine_rank, split_key, vertebra_name
from data.morphology import largest_component, remove_small_components, row_extent


def test_vertebra_names_and_order():
    assert [vertebra_name(v) for v in (1, 7, 8, 19, 20, 24, 25, 28)] == [
        "C1", "C7", "T1", "T12", "L1", "L5", "L6", "T13"
    ]
    assert sorted([20, 28, 19, 25, 24], key=spine_rank) == [19, 28, 20, 24, 25]
    with pytest.raises(ValueError, match="26"):
        vertebra_name(26)


def test_keys_round_trip_with_underscored_case_ids():
    assert split_key("sub-verse005", 20) == "sub-verse005_20"
    assert parse_key("my_case_id_23") == ("my_case_id", 23)
    with pytest.raises(ValueError):
        parse_key("nolabel")


def test_remove_small_components_and_largest():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True  # 9 px
    mask[7, 7] = True  # 1 px
    mask[6:8, 1:3] = True  # 4 px
    kept = remove_small_components(mask, 5)
    assert kept.sum() == 9 and not kept[7, 7]
    assert largest_component(mask).sum() == 9
    assert not largest_component(np.zeros((3, 3))).any()
    assert row_extent(mask) == (1, 7)
    assert row_extent(kept) == (1, 3)
    assert row_extent(np.zeros((4, 4))) is None


def test_crop_affine_is_ipl_and_centred():
    centre = np.array([1.0, -50.0, 200.0])
    affine = crop_affine((2.0, 2.0, 2.0), centre, (64, 64, 16))
    assert axis_codes(affine) == "IPL"
    np.testing.assert_allclose(voxel_spacing(affine), 2.0)
    np.testing.assert_allclose(voxel_to_world(affine, np.array([[32, 32, 8]]))[0], centre)
    # one row further down (axis 0) is 2 mm inferior
    np.testing.assert_allclose(voxel_to_world(affine, np.array([[33, 32, 8]]))[0] - centre, [0, 0, -2.0])


def test_write_and_load_crop(tmp_path: Path):
    ct = np.random.default_rng(0).normal(100, 200, size=(16, 12, 6)).astype(np.float32)
    label = np.zeros((16, 12, 6), np.uint8)
    label[5:10, 3:9, 1:5] = 20
    affine = crop_affine(1.0, np.zeros(3), ct.shape)
    write_crop(tmp_path, "ph000_20", ct, label, affine, {"label": 20, "crop_size": list(ct.shape)})
    assert list_crop_keys(tmp_path) == ["ph000_20"]
    crop = load_crop(tmp_path, "ph000_20")
    assert crop.case == "ph000" and crop.label == 20 and crop.sidecar["label"] == 20
    np.testing.assert_array_equal(crop.label_map, label)
    np.testing.assert_array_equal(crop.ct_hu, np.rint(ct))
    assert crop.ct_hu.dtype == np.float32
    with pytest.raises(ImageIOError, match="ph000_21"):
        load_crop(tmp_path, "ph000_21")


def test_read_split_validates(tmp_path: Path):
    good = tmp_path / "split.json"
    good.write_text(json.dumps({"train": {"a_20": 0, "a_21": 3}, "val": {"b_20": 1}}), encoding="utf-8")
    split = read_split(good)
    assert split["test"] == {} and split["train"]["a_21"] == 3
    assert split_of(split, "b_20") == ("val", 1) and split_of(split, "zz_1") is None
    for bad, message in [
        ({"train": {"a_20": 5}}, "grade 5"),
        ({"training": {}}, "unknown split"),
        ({"train": {"a": 0}}, "vertebra key"),
        ([1, 2], "expected an object"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            read_split(path)
