"""Masked-slice construction (docs/design.md, 'Masked slice'): band placement, row shifting, sampling of slices."""

from __future__ import annotations

import numpy as np
import pytest

from data.masking import (
    BAND_FILL_VALUE,
    MIN_ISLAND_VOXELS,
    MaskingSettings,
    canvas_width,
    central_slice_range,
    make_masked_slice,
    make_masked_slices,
    mask_height_rows,
    paste_columns,
    plane_slab,
    slice_centre,
    slice_offset_ratio,
    slice_sampling_weights,
    target_slice_extent,
    target_slices,
)

ROWS, COLS = 64, 48


def striped_slice(target_rows: tuple[int, int], neighbour_rows: list[tuple[int, int, int]],
                  cols: tuple[int, int] = (10, 30)) -> tuple[np.ndarray, np.ndarray]:
    """CT whose value encodes (row, col) and a label slice with box-shaped bodies."""
    rows, columns = np.mgrid[0:ROWS, 0:COLS]
    ct = (rows * 100 + columns).astype(np.float32)
    label = np.zeros((ROWS, COLS), dtype=np.uint8)
    label[target_rows[0]:target_rows[1] + 1, cols[0]:cols[1]] = 20
    for lab, first, last in neighbour_rows:
        if last >= 0 and first < ROWS:
            label[max(first, 0):min(last, ROWS - 1) + 1, cols[0]:cols[1]] = lab
    return ct, label


def reference_masked_ct(ct: np.ndarray, x1: int, x2: int, mask_height: int) -> tuple[np.ndarray, int]:
    """Loop transcription of the reference implementation's band placement and row copy."""
    rows = ct.shape[0]
    centre = (x1 + x2) // 2
    if centre <= mask_height // 2:
        band_top = 0
    elif rows - centre <= mask_height / 2:
        band_top = rows - mask_height
    else:
        band_top = centre - mask_height // 2
    band_stop = band_top + mask_height
    out = np.full_like(ct, BAND_FILL_VALUE)
    out[:band_top] = ct[x1 - band_top:x1]
    out[band_stop:] = ct[x2:x2 + rows - band_stop]
    return out, band_top


@pytest.mark.parametrize("target_rows", [(25, 36), (24, 36), (3, 14), (50, 61), (0, 9), (54, 63)])
def test_masked_slice_matches_reference_arithmetic(target_rows: tuple[int, int]) -> None:
    ct, label = striped_slice(target_rows, [(19, target_rows[0] - 14, target_rows[0] - 4),
                                            (21, target_rows[1] + 4, target_rows[1] + 14)])
    masked = make_masked_slice(ct, label, 20, None, mask_height_px=20)
    expected, band_top = reference_masked_ct(ct, *target_rows, 20)
    assert masked is not None
    np.testing.assert_array_equal(masked.masked_ct, expected)
    assert (masked.target_top, masked.target_bottom) == target_rows
    assert masked.band_top == band_top and masked.band_centre == band_top + 10
    assert masked.height_px == target_rows[1] - target_rows[0]


def test_band_and_shifted_rows() -> None:
    x1, x2, mask_height = 26, 37, 20
    ct, label = striped_slice((x1, x2), [(19, 10, 21), (21, 42, 55)])
    cam = np.random.default_rng(0).random((ROWS, COLS)).astype(np.float32)
    masked = make_masked_slice(ct, label, 20, cam, mask_height)
    band_top = (x1 + x2) // 2 - mask_height // 2
    band_stop = band_top + mask_height
    expected_band = np.zeros((ROWS, COLS), dtype=np.float32)
    expected_band[band_top:band_stop] = 1
    np.testing.assert_array_equal(masked.band_mask, expected_band)
    assert np.all(masked.masked_ct[band_top:band_stop] == BAND_FILL_VALUE)
    # rows above the band are the source rows just above x1, rows below start at x2
    np.testing.assert_array_equal(masked.masked_ct[:band_top], ct[x1 - band_top:x1])
    np.testing.assert_array_equal(masked.masked_ct[band_stop:], ct[x2:x2 + ROWS - band_stop])
    np.testing.assert_array_equal(masked.cam[:band_top], cam[x1 - band_top:x1])
    np.testing.assert_array_equal(masked.cam[band_stop:], cam[x2:x2 + ROWS - band_stop])
    assert np.all(masked.cam[band_top:band_stop] == 0)
    # neighbours abut the band: the upper neighbour's last row lands just above it
    neighbour_rows = np.flatnonzero(masked.neighbour_label.any(axis=1))
    assert band_top - 1 - (x1 - 1 - 21) in neighbour_rows
    assert masked.neighbour_label.max() == 1 and not np.any(masked.neighbour_label[band_top:band_stop])
    np.testing.assert_array_equal(masked.target_label_mask, (label == 20).astype(np.float32))


def test_neighbour_labels_are_selectable_and_exclude_target() -> None:
    ct, label = striped_slice((26, 37), [(19, 10, 21), (21, 42, 55)])
    only_lower = make_masked_slice(ct, label, 20, None, 20, neighbour_labels={21, 20})
    all_neighbours = make_masked_slice(ct, label, 20, None, 20)
    band_stop = only_lower.band_top + 20
    assert not only_lower.neighbour_label[:only_lower.band_top].any()
    assert only_lower.neighbour_label[band_stop:].any()
    assert all_neighbours.neighbour_label[:all_neighbours.band_top].any()
    # row x2 of the target is copied below the band but is not a neighbour
    assert not all_neighbours.neighbour_label[band_stop].any()


def test_small_components_are_ignored_and_unusable_slices_give_none() -> None:
    ct, label = striped_slice((26, 37), [])
    label[1:4, 40:43] = 20  # 9-pixel island of the target label
    masked = make_masked_slice(ct, label, 20, None, 20, min_component_px=50)
    assert (masked.target_top, masked.target_bottom) == (26, 37)
    assert masked.target_label_mask[1:4, 40:43].sum() == 0
    assert make_masked_slice(ct, label, 20, None, 20, min_component_px=1000) is None  # nothing left
    assert make_masked_slice(ct, label, 20, None, 10) is None  # taller than the band
    assert make_masked_slice(ct, np.zeros_like(label), 20, None, 20) is None  # absent
    with pytest.raises(ValueError, match="mask height"):
        make_masked_slice(ct, label, 20, None, ROWS + 1)


def test_batched_equals_single_slices() -> None:
    stack = [striped_slice((a, a + 11), [(19, a - 14, a - 4)]) for a in (5, 20, 30, 48)]
    ct = np.stack([s[0] for s in stack])
    label = np.stack([s[1] for s in stack])
    label[2] = 0  # no target in slice 2
    cam = np.random.default_rng(1).random(ct.shape).astype(np.float32)
    batch = make_masked_slices(ct, label, 20, cam, 20)
    assert batch.valid.tolist() == [True, True, False, True]
    for n in range(len(ct)):
        single = make_masked_slice(ct[n], label[n], 20, cam[n], 20)
        if single is None:
            assert batch.item(n) is None
            continue
        for field in ("masked_ct", "band_mask", "neighbour_label", "cam", "target_label_mask"):
            np.testing.assert_array_equal(getattr(batch.item(n), field), getattr(single, field))
        assert batch.item(n).band_top == single.band_top


def test_slice_sampling_stays_in_central_four_fifths() -> None:
    first, last = 10, 39  # 30 slices -> central 24
    start, stop = central_slice_range(first, last)
    assert (start, stop) == (13, 36)
    indices, probabilities = slice_sampling_weights(first, last)
    assert indices[0] == start and indices[-1] == stop
    assert probabilities.sum() == pytest.approx(1.0)
    assert indices[np.argmax(probabilities)] == slice_centre(first, last)
    assert np.all(np.diff(probabilities[: len(indices) // 2]) > 0)
    assert slice_offset_ratio(slice_centre(first, last), first, last) == 0.0
    assert slice_offset_ratio(stop, first, last) == pytest.approx(abs(stop - slice_centre(first, last)) / 30 * 2)
    assert central_slice_range(5, 5) == (5, 5)


def test_plane_slab_canvas_and_extent() -> None:
    volume = np.arange(8 * 6 * 4).reshape(8, 6, 4)
    sagittal = plane_slab(volume, "sagittal")
    coronal = plane_slab(volume, "coronal")
    assert sagittal.shape == (4, 8, 6) and np.array_equal(sagittal[2], volume[:, :, 2])
    assert coronal.shape == (6, 8, 4) and np.array_equal(coronal[3], volume[:, 3, :])
    assert canvas_width(volume.shape) == 6
    pasted = paste_columns(coronal[3].astype(float), 6, -1.0)
    assert pasted.shape == (8, 6) and np.all(pasted[:, 0] == -1) and np.array_equal(pasted[:, 1:5], volume[:, 3, :])
    with pytest.raises(ValueError, match="plane"):
        plane_slab(volume, "axial")
    labels = np.zeros((10, 20, 20), dtype=np.uint8)
    labels[3:7, 5:15, 5:15] = 20
    labels[9, 0, 0] = 20  # a 1-voxel island outside the body
    assert target_slice_extent(labels, 20, 50) == (3, 6)
    assert target_slice_extent(labels, 21, 50) is None


# ------------------------------------------------------------------ settings and the one slice selection
def test_masking_settings_from_the_training_flags_have_the_documented_defaults() -> None:
    from options.train_options import TrainOptions

    opt = TrainOptions().gather_options(["--dataroot", "."])
    settings = MaskingSettings.from_options(opt)
    assert settings == MaskingSettings(40.0, 50, 50, (-300.0, 800.0))
    assert MaskingSettings.from_options(TrainOptions().gather_options(
        ["--dataroot", ".", "--mask_height", "24", "--min_component_px", "7", "--hu_window", "-100", "300"])) == \
        MaskingSettings(24.0, 7, MIN_ISLAND_VOXELS, (-100.0, 300.0))
    with pytest.raises(ValueError, match="--mask_height"):
        MaskingSettings(mask_height_mm=0.0)


def test_mask_height_converts_mm_to_rows_with_the_row_spacing() -> None:
    settings = MaskingSettings(mask_height_mm=40.0)
    assert settings.mask_height_px(1.0) == 40
    assert settings.mask_height_px(2.0) == 20  # the rows of an anisotropic (2, 1, 0.5) mm crop are 2 mm apart
    assert settings.mask_height_px(0.8) == 50
    assert mask_height_rows(0.3, 1.0) == 1  # at least one row
    with pytest.raises(ValueError, match="row spacing"):
        mask_height_rows(40.0, 0.0)


def test_target_slices_drop_small_3d_islands_before_the_central_range() -> None:
    labels = np.zeros((20, 8, 8), dtype=np.uint8)  # (slices, rows, cols)
    labels[5:15, 2:6, 2:6] = 20  # 160 voxels on slices 5..14
    labels[18, 0, 0:3] = 20  # a 3-voxel island on slice 18
    selected = target_slices(labels, 20)
    assert (selected.first, selected.last) == (5, 14)
    assert (selected.start, selected.stop) == central_slice_range(5, 14) == (6, 13)
    np.testing.assert_array_equal(selected.indices, np.arange(6, 14))
    raw = np.flatnonzero((labels == 20).any(axis=(1, 2)))
    assert central_slice_range(int(raw[0]), int(raw[-1])) != (selected.start, selected.stop)  # the island matters
    assert target_slices(labels, 20, min_island_voxels=1).last == 18
    assert target_slices(labels, 21) is None


def island_crop() -> tuple[np.ndarray, np.ndarray, int]:
    """A synthetic crop whose target has a 9-voxel island on a sagittal slice outside its body."""
    from tests.synthetic_crops import BODY_Z, make_crop_arrays

    ct, label_map = make_crop_arrays([19, 20, 21], 20)
    island_z = BODY_Z[1] + 1
    label_map[1:4, 2:5, island_z] = 20
    return ct, label_map, island_z


def test_training_synthesis_and_generation_metrics_score_the_same_slices(tmp_path) -> None:
    import argparse
    import math
    import warnings

    import torch

    from data.aligned_dataset import AlignedDataset
    from data.crops import crop_affine, write_crop
    from data.labels import split_key, vertebra_name
    from evaluation.generation_metrics import generation_metrics, scored_slices
    from models.networks import GeneratorOutput
    from models.synthesis.plane import synthesize_plane
    from models.synthesis.runner import GeneratorRunner
    from models.synthesis.settings import SynthesisSettings
    from tests.synthetic_crops import CROP_SIZE, SPACING_MM, WIDE_WINDOW
    from util.fileio import write_json

    ct, label_map, island_z = island_crop()
    expected = target_slices(plane_slab(label_map, "sagittal"), 20)
    assert expected.last < island_z  # the island is left out of the extent

    # training: the dataset samples slices from this range
    dataroot = tmp_path / "straightened"
    key = split_key("isl001", 20)
    sidecar = {"case": "isl001", "label": 20, "name": vertebra_name(20), "crop_size": list(CROP_SIZE),
               "spacing_mm": list(SPACING_MM), "axes": "IPL", "centre_voxel": [n // 2 for n in CROP_SIZE]}
    write_crop(dataroot, key, ct, label_map, crop_affine(SPACING_MM, np.zeros(3), CROP_SIZE), sidecar)
    split_path = tmp_path / "vertebra_data.json"
    write_json(split_path, {"train": {key: 0}, "val": {}, "test": {}})
    opt = AlignedDataset.modify_commandline_options(argparse.ArgumentParser(), True).parse_args([])
    for name, value in dict(dataroot=str(dataroot), split_json=str(split_path), cam_dir=None, phase="train",
                            plane="sagittal", cache_dir=str(tmp_path / "cache"), seed=0,
                            max_dataset_size=math.inf, hu_window=list(WIDE_WINDOW), mask_height=16.0).items():
        setattr(opt, name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entry = AlignedDataset(opt, show_progress=False).entries[0]
    assert (entry.first, entry.last) == (expected.first, expected.last)
    np.testing.assert_array_equal(entry.candidates, expected.indices)

    # synthesis: the target step replaces exactly these slices
    class BandCopy(torch.nn.Module):
        def forward(self, masked_ct, offset_plane, band_mask, cam, mask_height_px=None) -> GeneratorOutput:
            seg = band_mask * 0.9
            height = torch.full((masked_ct.shape[0],), float(mask_height_px))
            zeros = torch.zeros_like(masked_ct)
            return GeneratorOutput(masked_ct, seg, height, masked_ct, seg, height, torch.cat([zeros, zeros], 1))

    settings = SynthesisSettings(20, WIDE_WINDOW)
    result = synthesize_plane(GeneratorRunner(BandCopy()), ct.astype(np.float32), label_map, None, 20, "sagittal",
                              settings)
    assert result.processed_slices == expected.indices.tolist()

    # generation metrics: the same slices are scored
    np.testing.assert_array_equal(scored_slices(label_map, 20, "sagittal"), expected.indices)
    metrics = generation_metrics(ct, ct, label_map, label_map, 20, "sagittal", min_slice_voxels=0)
    assert metrics["n_slices"] == len(expected.indices)
