"""Masked-slice dataset (docs/design.md, 'Masked slice') on tiny synthetic crops with box-shaped bodies of known
heights."""

from __future__ import annotations

import argparse
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import data.crops
from data.aligned_dataset import AlignedDataset, AlignedDatasetSettings
from data.crops import CropCache, crop_affine, crop_paths, write_crop
from data.image_io import ImageIOError, save_nifti, window_hu
from data.loader import LoaderSettings, create_dataset, find_dataset_using_name
from data.masking import BAND_FILL_VALUE, central_slice_range, mask_height_rows
from tests.synthetic_crops import (
    BODY_COLS,
    CROP_SIZE,
    HEIGHTS,
    SPACING_MM,
    WIDE_WINDOW,
    body_rows,
    make_crop_arrays,
    write_synthetic_cohort,
)
from util.fileio import write_json

MASK_HEIGHT_MM = 16.0  # 20 rows at 0.8 mm
LABELS = sorted(HEIGHTS)


def dataset_options(dataroot: Path, split_json: Path, **overrides) -> argparse.Namespace:
    """The options the dataset reads, with the dataset's own flag defaults."""
    parser = AlignedDataset.modify_commandline_options(argparse.ArgumentParser(), True)
    opt = parser.parse_args([])
    values = dict(dataroot=str(dataroot), split_json=str(split_json), cam_dir=None, phase="train",
                  plane="sagittal", cache_dir=None, seed=0, batch_size=2, num_threads=0, gpu_ids=[],
                  dataset_mode="aligned", serial_batches=False, max_dataset_size=math.inf,
                  hu_window=list(WIDE_WINDOW), mask_height=MASK_HEIGHT_MM)
    values.update(overrides)
    for key, value in values.items():
        setattr(opt, key, value)
    return opt


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_synthetic_cohort(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture()
def dataset(cohort: tuple[Path, Path]) -> AlignedDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AlignedDataset(dataset_options(*cohort), show_progress=False)


def test_registry_and_geometry(dataset: AlignedDataset) -> None:
    assert find_dataset_using_name("aligned") is AlignedDataset
    with pytest.raises(ValueError, match="dataset_mode"):
        find_dataset_using_name("nonexistent")
    assert len(dataset) == 2 * len(LABELS)
    assert dataset.crop_shape == CROP_SIZE and dataset.image_shape == (64, 64)
    assert dataset.mask_height_px == mask_height_rows(MASK_HEIGHT_MM, SPACING_MM[0]) == 20


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_item_invariants(dataset: AlignedDataset, epoch: int) -> None:
    window = tuple(WIDE_WINDOW)
    for index, entry in enumerate(dataset.entries):
        item = dataset[(epoch, index)]
        z = item["slice_index"]
        ct_hu, label_map = make_crop_arrays(LABELS, entry.label, stray_blob=True)
        source = window_hu(ct_hu[:, :, z], window)
        x1, x2 = body_rows(LABELS, entry.label, z)[entry.label]
        band_top, band_stop = item["band_top"], item["band_top"] + dataset.mask_height_px
        # band rows and target rows
        assert (item["target_top"], item["target_bottom"]) == (x1, x2)
        band = item["band_mask"][0].numpy()
        assert np.all(band[band_top:band_stop] == 1) and band.sum() == dataset.mask_height_px * 64
        assert item["band_centre"] == band_top + dataset.mask_height_px // 2
        # rows above / below the band are the source rows just above x1 / from x2 down
        masked = item["masked_ct"][0].numpy()
        np.testing.assert_array_equal(masked[:band_top], source[x1 - band_top:x1])
        np.testing.assert_array_equal(masked[band_stop:], source[x2:x2 + 64 - band_stop])
        assert np.all(masked[band_top:band_stop] == BAND_FILL_VALUE) and BAND_FILL_VALUE == -1.0
        np.testing.assert_array_equal(item["real_ct"][0].numpy(), source)
        # height target: the label's row extent in this slice, in mm
        assert item["height_px"] == x2 - x1
        assert item["height_mm"] == pytest.approx((x2 - x1) * SPACING_MM[0])
        # slice sampling stays in the central 4/5 of the target's extent
        present = np.flatnonzero((label_map == entry.label).sum(axis=(0, 1)) >= 50)
        start, stop = central_slice_range(int(present[0]), int(present[-1]))
        assert start <= z <= stop
        # target label and neighbours
        np.testing.assert_array_equal(item["target_label"][0, x1:x2 + 1, BODY_COLS[0]:BODY_COLS[1]].numpy(), 1)
        assert item["target_label"].sum() == (x2 - x1 + 1) * (BODY_COLS[1] - BODY_COLS[0])
        assert item["neighbour_label"][0, band_top:band_stop].sum() == 0
        assert torch.all(item["offset_plane"] == item["offset_plane"][0, 0, 0])
        assert item["cam"].abs().sum() == 0
        for key in ("masked_ct", "real_ct", "band_mask", "offset_plane", "cam", "neighbour_label", "target_label"):
            assert item[key].shape == (1, 64, 64) and item[key].dtype == torch.float32


def test_slice_choice_is_seeded_by_epoch_and_index(dataset: AlignedDataset) -> None:
    first = [dataset[(3, i)]["slice_index"] for i in range(len(dataset))]
    again = [dataset[(3, i)]["slice_index"] for i in range(len(dataset))]
    assert first == again
    drawn = np.array([dataset[(epoch, 0)]["slice_index"] for epoch in range(300)])
    entry = dataset.entries[0]
    values, counts = np.unique(drawn, return_counts=True)
    assert set(values) <= set(entry.candidates.tolist()) and len(values) > 3
    assert abs(values[np.argmax(counts)] - entry.centre) <= 1  # triangular weights peak at the centre


def test_validation_phase_uses_centre_slices(cohort: tuple[Path, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = AlignedDataset(dataset_options(*cohort), phase="val", show_progress=False)
    assert len(val) == len(LABELS)
    assert all(val[(e, 0)]["slice_index"] == val.entries[0].centre for e in range(5))


def test_coronal_plane(cohort: tuple[Path, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coronal = AlignedDataset(dataset_options(*cohort, plane="coronal", cache_dir=None), show_progress=False)
    item = coronal[(0, 0)]
    entry = coronal.entries[0]
    assert item["masked_ct"].shape == (1, 64, 64)  # 64 x 16 coronal slices pasted on a 64-wide canvas
    assert BODY_COLS[0] + (BODY_COLS[1] - BODY_COLS[0]) // 10 <= item["slice_index"] < BODY_COLS[1]
    assert item["real_ct"][0, :, :24].eq(-1).all()  # canvas columns outside the 16 coronal columns
    rows = body_rows(LABELS, entry.label, 8)[entry.label]
    assert (item["target_top"], item["target_bottom"]) == rows


def test_loader_batches_and_workers_agree(cohort: tuple[Path, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = create_dataset(dataset_options(*cohort, batch_size=4, num_threads=0))
        parallel = create_dataset(dataset_options(*cohort, batch_size=4, num_threads=2))
    serial.set_epoch(2)
    parallel.set_epoch(2)
    batches = list(serial)
    assert len(batches) == serial.batches_per_epoch() == 3
    assert batches[0]["height_px"].dtype == torch.float32 and batches[0]["target_top"].dtype == torch.int64
    for a, b in zip(batches, parallel):
        assert a["key"] == b["key"] and torch.equal(a["masked_ct"], b["masked_ct"])
    serial.set_epoch(2, start_batch=1)  # resuming inside an epoch skips the batches already trained
    assert [b["key"] for b in serial] == [b["key"] for b in batches[1:]]


def test_cache_is_built_once_and_invalidated_by_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataroot, split = write_synthetic_cohort(tmp_path, cases={"syn001": "train"}, labels=[19, 20, 21])
    calls: list[str] = []
    real_load = data.crops.load_crop
    monkeypatch.setattr(data.crops, "load_crop", lambda root, key, need_ct=True: calls.append(key) or
                        real_load(root, key, need_ct))
    cache = CropCache(dataroot)
    cache.get("syn001_20")
    CropCache(dataroot).get("syn001_20")  # a new process/cache object: memory-mapped, no decode
    assert calls == ["syn001_20"]
    assert (dataroot / ".cache" / "crops" / "sagittal" / "syn001_20.ct.npy").is_file()
    ct, label = make_crop_arrays([19, 20, 21], 20)
    ct[:] = 5
    os.utime(crop_paths(dataroot, "syn001_20").ct, ns=(0, 0))
    write_crop(dataroot, "syn001_20", ct, label, crop_affine(SPACING_MM, np.zeros(3), CROP_SIZE), {})
    refreshed = cache.get("syn001_20")
    assert calls == ["syn001_20", "syn001_20"] and np.all(refreshed.ct_hu == 5)


def test_attention_maps_are_shifted_and_missing_ones_warn(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    dataroot, split = cohort
    cam_dir = tmp_path / "heatmap"
    cam = np.zeros(CROP_SIZE, dtype=np.float32)
    cam[:, 30:34, :] = 0.75  # a vertical stripe of attention
    save_nifti(cam, crop_affine(SPACING_MM, np.zeros(3), CROP_SIZE), cam_dir / "syn001_18.nii.gz")
    with pytest.warns(UserWarning, match="11 of 12 attention maps missing"):
        ds = AlignedDataset(dataset_options(dataroot, split, cam_dir=str(cam_dir), cache_dir=str(tmp_path / "c")),
                            show_progress=False)
    item = ds[(0, 0)]
    assert item["key"] == "syn001_18"
    band_top, band_stop = item["band_top"], item["band_top"] + ds.mask_height_px
    assert torch.allclose(item["cam"][0, :band_top, 30:34], torch.tensor(0.75))
    assert item["cam"][0, band_top:band_stop].sum() == 0 and item["cam"][0, :, :30].sum() == 0
    assert ds[(0, 1)]["cam"].sum() == 0
    with pytest.warns(UserWarning, match="no --cam_dir"):
        AlignedDataset(dataset_options(dataroot, split), show_progress=False)


def test_bad_inputs_fail_before_training(tmp_path: Path) -> None:
    dataroot, split = write_synthetic_cohort(tmp_path, cases={"syn001": "train"}, labels=[19, 20, 21])
    bad_split = tmp_path / "empty.json"
    write_json(bad_split, {"train": {}, "val": {}, "test": {}})
    with pytest.raises(ValueError, match="empty.json: the split is empty"):
        AlignedDataset(dataset_options(dataroot, bad_split), show_progress=False)
    write_json(bad_split, {"train": {"syn001_19": 2, "syn001_20": 3}})
    with pytest.raises(ValueError, match="no healthy vertebra"):
        AlignedDataset(dataset_options(dataroot, bad_split), show_progress=False)
    write_json(bad_split, {"train": {"syn001_19": 0, "syn001_22": 0}})
    with pytest.raises(ImageIOError,
                       match=r"empty.json: 2 crop file\(s\) of listed vertebrae not found: .*syn001_22\.nii\.gz"):
        AlignedDataset(dataset_options(dataroot, bad_split), show_progress=False)
    ct, label = make_crop_arrays([19, 20, 21], 21)
    write_crop(dataroot, "syn001_21", ct[:, :, :12], label[:, :, :12],
               crop_affine(SPACING_MM, np.zeros(3), CROP_SIZE), {"crop_size": list(CROP_SIZE)})
    with pytest.raises(ImageIOError, match=r"syn001_21\.nii\.gz: crop shape"):
        AlignedDataset(dataset_options(dataroot, split), show_progress=False)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(ImageIOError, match="cannot write the crop cache"):
        AlignedDataset(dataset_options(dataroot, split, cache_dir=str(blocker / "cache")), show_progress=False)
    write_json(bad_split, {"val": {"syn001_19": 0}})
    with pytest.raises(ValueError, match="split 'train' lists no vertebra"):
        AlignedDataset(dataset_options(dataroot, bad_split), show_progress=False)


# ------------------------------------------------------------------ settings built from the command line
def test_dataset_and_loader_settings_take_the_training_flags() -> None:
    from options.train_options import TrainOptions

    defaults = TrainOptions().gather_options(["--dataroot", "."])
    assert AlignedDatasetSettings.from_options(defaults) == AlignedDatasetSettings(None, None, None, math.inf, 1, 0)
    loader = LoaderSettings.from_options(defaults)
    assert (loader.batch_size, loader.num_threads, loader.serial_batches, loader.seed) == (1, 4, False, 0)
    given = TrainOptions().gather_options(
        ["--dataroot", ".", "--split_json", "s.json", "--cache_dir", "c", "--cam_dir", "maps", "--max_dataset_size",
         "7", "--max_healthy_grade", "2", "--seed", "5", "--serial_batches", "--batch_size", "3", "--num_threads", "0"])
    assert AlignedDatasetSettings.from_options(given) == \
        AlignedDatasetSettings(Path("s.json"), Path("c"), Path("maps"), 7.0, 2, 5)
    loader = LoaderSettings.from_options(given)
    assert (loader.batch_size, loader.num_threads, loader.serial_batches, loader.seed) == (3, 0, True, 5)


def test_absent_data_options_keep_the_field_defaults() -> None:
    assert AlignedDatasetSettings.from_options({}) == AlignedDatasetSettings()
    assert AlignedDatasetSettings.from_options({"split_json": "", "cam_dir": ""}).cam_dir is None  # empty: not given
    loader = LoaderSettings.from_options({"batch_size": 2, "num_threads": 0, "gpu_ids": []})
    assert (loader.serial_batches, loader.seed, loader.pin_memory) == (False, 0, False)  # no GPU named: not pinned
    with pytest.raises(ValueError, match="--batch_size"):
        LoaderSettings.from_options({"num_threads": 0, "gpu_ids": []})


def test_dataset_settings_choose_the_split_file_and_limit_the_vertebrae(tmp_path: Path) -> None:
    settings = AlignedDatasetSettings(max_dataset_size=2)
    assert settings.limit(["a_1", "b_2", "c_3"]) == ["a_1", "b_2"]
    assert AlignedDatasetSettings().limit(["a_1", "b_2", "c_3"]) == ["a_1", "b_2", "c_3"]  # inf: all
    assert settings.split_path(tmp_path / "straightened") == tmp_path / "vertebra_data.json"
    assert AlignedDatasetSettings(split_json="x.json").split_path(tmp_path) == Path("x.json")


def test_max_dataset_size_keeps_the_first_healthy_vertebrae_by_key(cohort: tuple[Path, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        everything = AlignedDataset(dataset_options(*cohort), show_progress=False)
        limited = AlignedDataset(dataset_options(*cohort, max_dataset_size=2.0), show_progress=False)
    assert [e.key for e in limited.entries] == [e.key for e in everything.entries][:2]
