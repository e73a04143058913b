"""Attention-map reader (data/attention_maps.py): [0, 1] float32 on the crop grid, grid errors name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.attention_maps import attention_map_path, load_attention_map
from data.image_io import ImageIOError, Volume, save_nifti

AFFINE = np.diag([1.0, 0.8, 1.2, 1.0])


def test_map_is_clipped_to_the_unit_interval_as_float32(tmp_path: Path) -> None:
    values = np.array([[[-0.5, 0.25], [0.75, 1.5]]], dtype=np.float32)
    path = attention_map_path(tmp_path, "s01_20")
    assert path == tmp_path / "s01_20.nii.gz"
    save_nifti(values, AFFINE, path, dtype=np.float32)
    cam = load_attention_map(path, Volume(np.zeros(values.shape, np.uint8), AFFINE, tmp_path / "label.nii.gz"))
    assert cam.dtype == np.float32
    np.testing.assert_allclose(cam, [[[0.0, 0.25], [0.75, 1.0]]])


def test_map_on_another_grid_is_refused_naming_both_files(tmp_path: Path) -> None:
    path = attention_map_path(tmp_path, "s01_20")
    save_nifti(np.zeros((2, 2, 2), np.float32), AFFINE, path, dtype=np.float32)
    label = Volume(np.zeros((2, 2, 3), np.uint8), AFFINE, tmp_path / "label.nii.gz")
    with pytest.raises(ImageIOError, match="shapes differ") as raised:
        load_attention_map(path, label)
    assert str(path) in str(raised.value) and "label.nii.gz" in str(raised.value)
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    with pytest.raises(ImageIOError, match="affines differ"):
        load_attention_map(path, Volume(np.zeros((2, 2, 2), np.uint8), shifted, tmp_path / "label.nii.gz"))
