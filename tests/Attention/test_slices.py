"""Attention.slices: which sagittal slices a vertebra contributes, their orientation, sampling, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from Attention.slices import (
    SliceDataset,
    SliceInput,
    VertebraSlices,
    body_slice_indices,
    central_sagittal_slices,
    loss_class_weights,
    random_shift,
    random_vertical_flip,
    sagittal_slices,
    sample_weights,
    vertebra_neighbourhood,
    view_rows,
)


def test_central_sagittal_slices():
    assert central_sagittal_slices(64, 30) == (17, 47)
    assert central_sagittal_slices(40, 30) == (5, 35)
    assert central_sagittal_slices(20, 30) == (0, 20)
    with pytest.raises(ValueError, match="n_slices must be >= 1"):
        central_sagittal_slices(20, 0)


def test_view_rows_are_the_central_rows_spanning_view_mm():
    assert view_rows(64, 2.0, 0.0) == (0, 64)
    assert view_rows(64, 2.0, 40.0) == (22, 42)
    assert view_rows(64, 2.0, 500.0) == (0, 64)
    assert view_rows(64, 2.0, 0.5) == (32, 33)


def test_body_slice_indices_counts_target_voxels_per_sagittal_slice():
    labels = np.zeros((6, 5, 8), dtype=np.uint8)
    labels[:, :, 3] = 20          # 30 voxels
    labels[:2, :2, 4] = 20        # 4 voxels
    labels[:, :, 5] = 21          # another vertebra
    assert body_slice_indices(labels, 20, 0, 8, min_body_px=4) == [3, 4]
    assert body_slice_indices(labels, 20, 0, 8, min_body_px=5) == [3]
    assert body_slice_indices(labels, 20, 4, 8, min_body_px=1) == [4]


def test_sagittal_slices_keep_rows_superior_inferior_and_window():
    ct = np.full((4, 3, 5), -1000.0, dtype=np.float32)
    ct[0, :, 2] = 3000.0  # the most superior row of slice z = 2
    images = sagittal_slices(ct, [2, 4], window=(-1000.0, 3000.0))
    assert images.shape == (2, 1, 4, 3) and images.dtype == np.float32
    assert np.all(images[0, 0, 0] == 1.0) and np.all(images[0, 0, 1:] == -1.0) and np.all(images[1] == -1.0)
    rows = sagittal_slices(ct, [2], window=(-1000.0, 3000.0), rows=(0, 2))
    assert rows.shape == (1, 1, 2, 3) and np.all(rows[0, 0, 0] == 1.0) and np.all(rows[0, 0, 1] == -1.0)


def test_vertebra_neighbourhood_is_a_distance_in_mm_per_axis():
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[4, 4, 4] = 20
    near = vertebra_neighbourhood(labels, (1.0, 2.0, 3.0), margin_mm=2.5)
    assert near[4, 4, 4] and near[6, 4, 4] and not near[7, 4, 4]  # 2 mm in, 3 mm out along S->I
    assert near[4, 5, 4] and not near[4, 6, 4]  # 2 mm in, 4 mm out along A->P
    assert not near[4, 4, 5]  # 3 mm along R->L
    assert near[5, 5, 4] == (np.hypot(1.0, 2.0) <= 2.5)
    assert not vertebra_neighbourhood(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), 5.0).any()


def test_slice_input_sets_voxels_far_from_the_vertebrae_to_air_and_keeps_the_view():
    ct = np.full((20, 6, 4), 500.0, dtype=np.float32)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[8:12, 2:4, :] = 20
    whole = SliceInput((-1000.0, 1000.0)).slices(ct, labels, (2.0, 2.0, 2.0), [1])
    assert whole.shape == (1, 1, 20, 6) and np.allclose(whole, 0.5)
    masked = SliceInput((-1000.0, 1000.0), view_mm=16.0, margin_mm=2.0).slices(ct, labels, (2.0, 2.0, 2.0), [1, 2])
    assert masked.shape == (2, 1, 8, 6)  # 16 mm = 8 central rows (6..14)
    kept = vertebra_neighbourhood(labels, (2.0, 2.0, 2.0), 2.0)[6:14, :, 1]
    assert np.allclose(masked[0, 0][kept], 0.5) and np.all(masked[0, 0][~kept] == -1.0)
    assert kept[2:6, 1:5].all() and not kept[0].any() and not kept[:, 0].any()


def _vertebrae(counts: list[tuple[bool, int]]) -> list[VertebraSlices]:
    return [VertebraSlices(f"v{i}", int(f), f, np.zeros((n, 4, 4), np.float16)) for i, (f, n) in enumerate(counts)]


def test_sample_weights_give_each_class_equal_mass():
    dataset = SliceDataset(_vertebrae([(False, 3), (False, 5), (False, 2), (True, 4)]))
    weights = sample_weights(dataset, balance_classes=True).numpy()
    fractured = np.array([dataset.vertebrae[v].fractured for v, _ in dataset.index])
    assert weights[fractured].sum() == pytest.approx(weights[~fractured].sum())
    unbalanced = sample_weights(dataset, balance_classes=False).numpy()
    per_vertebra = [unbalanced[[i for i, (v, _) in enumerate(dataset.index) if v == k]].sum() for k in range(4)]
    assert per_vertebra == pytest.approx([1.0] * 4)
    image, cls, vertebra = dataset[len(dataset) - 1]
    assert image.shape == (1, 4, 4) and cls == 1 and vertebra == 3


def test_loss_class_weights_are_inverse_class_frequency():
    weights = loss_class_weights(_vertebrae([(False, 1), (False, 1), (False, 1), (True, 1)]))
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2])


def test_vertical_flip_and_shift():
    images = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).reshape(2, 1, 4, 3)
    flipped = random_vertical_flip(images, torch.Generator().manual_seed(0))
    for original, out in zip(images, flipped):
        assert torch.equal(out, original) or torch.equal(out, original.flip(1))
    shifted = random_shift(torch.zeros(3, 1, 8, 8), 2, torch.Generator().manual_seed(0))
    assert shifted.shape == (3, 1, 8, 8) and set(shifted.unique().tolist()) <= {-1.0, 0.0}
    assert torch.equal(random_shift(images, 0, torch.Generator()), images)
