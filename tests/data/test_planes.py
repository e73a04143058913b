"""data.planes: which crop axes the sagittal and coronal planes use, and everything that slices by plane agrees."""

from __future__ import annotations

import numpy as np
import pytest

from data.crops import CROP_AXES
from data.masking import plane_slab
from data.planes import CORONAL_AXES, PLANES, SAGITTAL_AXES, plane_axes
from evaluation.generation_metrics import generation_metrics
from evaluation.rhlv import plane_heights, plane_to_axial


def crop() -> np.ndarray:
    """A (S->I, A->P, R->L) crop of distinct sizes whose voxel value encodes its index (100 i + 10 j + k)."""
    i, j, k = np.meshgrid(np.arange(5), np.arange(4), np.arange(3), indexing="ij")
    return (100 * i + 10 * j + k).astype(np.float32)


def test_axes_follow_the_crop_contract() -> None:
    assert CROP_AXES == "IPL"  # axis 1 runs to posterior (A->P), axis 2 to left (R->L)
    assert PLANES == ("sagittal", "coronal")
    assert (SAGITTAL_AXES.slice_axis, SAGITTAL_AXES.column_axis) == (2, 1)
    assert (CORONAL_AXES.slice_axis, CORONAL_AXES.column_axis) == (1, 2)
    assert SAGITTAL_AXES.column_direction == "anterior \u2192 posterior"
    assert CORONAL_AXES.column_direction == "right \u2192 left"


@pytest.mark.parametrize("plane", PLANES)
def test_plane_slab_slices_along_the_slice_axis(plane: str) -> None:
    volume = crop()
    axes = plane_axes(plane)
    slab = plane_slab(volume, plane)
    assert slab.shape == (volume.shape[axes.slice_axis], volume.shape[0], volume.shape[axes.column_axis])
    for index in range(slab.shape[0]):
        expected = volume[:, :, index] if plane == "sagittal" else volume[:, index, :]
        assert np.array_equal(slab[index], expected)
    assert np.shares_memory(slab, volume)  # a view: synthesis writes slices back through it


@pytest.mark.parametrize("plane", PLANES)
def test_axial_maps_arrange_as_slices_and_back(plane: str) -> None:
    counts = np.arange(12, dtype=np.int32).reshape(4, 3)  # (A->P, R->L) columns of a crop
    heights = plane_heights(counts, plane)
    slices = plane_slab(crop(), plane)
    assert heights.shape == (slices.shape[0], slices.shape[2])  # one row per slice, one column per slice column
    assert heights.dtype == np.float64
    assert np.array_equal(plane_to_axial(heights, plane), counts)
    if plane == "sagittal":
        assert np.array_equal(heights[2], counts[:, 2])  # sagittal slice z=2: all A->P columns at R->L index 2


@pytest.mark.parametrize("call", [
    lambda: plane_axes("axial"),
    lambda: plane_slab(crop(), "axial"),
    lambda: plane_heights(np.zeros((2, 2)), "axial"),
    lambda: generation_metrics(crop(), crop(), crop(), crop(), 1, "axial"),
])
def test_unknown_planes_are_refused_with_the_known_ones(call) -> None:
    with pytest.raises(ValueError, match=r"unknown plane 'axial'; expected one of \('sagittal', 'coronal'\)"):
        call()
