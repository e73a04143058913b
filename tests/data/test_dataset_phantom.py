"""Dataset invariants on straightened phantom crops (phantom generator -> straightening -> masked slices)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from data.aligned_dataset import AlignedDataset
from data.crops import load_crop
from data.image_io import window_hu
from data.labels import split_key
from data.masking import central_slice_range, target_slice_extent
from data.morphology import remove_small_components, row_extent
from straighten.pipeline import straighten_root
from tests.data.test_dataset import dataset_options
from tests.phantom_fixtures import make_test_phantom
from util.fileio import write_json

CROP_SIZE = (96, 64, 48)  # 1 mm: the target and parts of both neighbours, small for speed


@pytest.fixture(scope="module")
def phantom_crops(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("phantom_crops")
    phantom = make_test_phantom(root, case="phds", labels=(19, 20, 21, 22), fractures={21: ("wedge", 0.35)},
                                orientation="PIR", spacing_mm=(1.0, 1.0, 1.0), seed=3)
    results = straighten_root(root, crop_size=CROP_SIZE, spacing_mm=1.0)
    assert not any(r.failed for r in results), [r.error for r in results]
    split = {"train": {split_key("phds", v["label"]): int(v["grade"]) for v in phantom.truth["vertebrae"]}}
    write_json(root / "vertebra_data.json", split)
    return root / "straightened", root / "vertebra_data.json"


def test_masked_slices_of_phantom_crops(phantom_crops: tuple[Path, Path]) -> None:
    dataroot, split = phantom_crops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = AlignedDataset(dataset_options(dataroot, split, hu_window=[-300.0, 800.0], mask_height=40.0),
                                 show_progress=False)
    assert dataset.crop_shape == CROP_SIZE and dataset.mask_height_px == 40
    assert {e.label for e in dataset.entries} <= {19, 20, 22}  # the grade-2 wedge fracture (21) is not trained on
    healthy_labels = {19, 20, 22}
    for index, entry in enumerate(dataset.entries):
        crop = load_crop(dataroot, entry.key)
        first, last = target_slice_extent(np.moveaxis(crop.label_map, 2, 0), entry.label)
        start, stop = central_slice_range(first, last)
        for epoch in range(4):
            item = dataset[(epoch, index)]
            z = item["slice_index"]
            assert start <= z <= stop
            source = window_hu(crop.ct_hu[:, :, z], (-300.0, 800.0))
            target = remove_small_components(crop.label_map[:, :, z] == entry.label, 50)
            x1, x2 = row_extent(target)
            assert (item["target_top"], item["target_bottom"]) == (x1, x2)
            assert item["height_mm"] == pytest.approx((x2 - x1) * crop.spacing_mm[0])
            band_top = item["band_top"]
            band_stop = band_top + 40
            band_rows = np.flatnonzero(item["band_mask"][0].numpy().any(axis=1))
            assert band_rows.tolist() == list(range(band_top, band_stop))
            masked = item["masked_ct"][0].numpy()
            np.testing.assert_array_equal(masked[:band_top], source[x1 - band_top:x1])
            np.testing.assert_array_equal(masked[band_stop:], source[x2:x2 + CROP_SIZE[0] - band_stop])
            # neighbour labels: the healthy neighbours (not the fractured L2), shifted like the CT
            healthy = np.isin(crop.label_map[:, :, z], [lab for lab in healthy_labels if lab != entry.label])
            neighbours = item["neighbour_label"][0].numpy()
            np.testing.assert_array_equal(neighbours[:band_top], healthy[x1 - band_top:x1])
            np.testing.assert_array_equal(neighbours[band_stop:], healthy[x2:x2 + CROP_SIZE[0] - band_stop])
            assert not neighbours[band_top:band_stop].any()
            if entry.label == 20:  # L1: healthy T12 (19) above the band, fractured L2 (21) below is left out
                assert neighbours[:band_top].any() and not neighbours[band_stop:].any()
