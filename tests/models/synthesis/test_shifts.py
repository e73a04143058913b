"""Row shifts of the neighbour re-centring (models/synthesis/shifts.py): rows, directions, fill, inverse."""

from __future__ import annotations

import numpy as np

from models.synthesis.shifts import centring_shifts, shift_rows, shift_rows_back, shifted_sources


def slow_shift(image: np.ndarray, shift: int, fill: float) -> np.ndarray:
    """One (H, W) slice moved down by ``shift`` rows, row by row."""
    out = np.full_like(image, fill)
    for row in range(image.shape[0]):
        source = row - shift
        if 0 <= source < image.shape[0]:
            out[row] = image[source]
    return out


def test_centring_shift_puts_the_label_centre_on_the_middle_row() -> None:
    labels = np.zeros((3, 12, 5), dtype=np.uint8)
    labels[0, 2:6, 1:4] = 7  # rows 2..5: mean 3.5, truncated to 3 -> 6 - 3 = 3 rows down
    labels[1, 8:11, :] = 7  # rows 8..10: centre 9 -> 3 rows up
    assert centring_shifts(labels, 7).tolist() == [3, -3, 0]  # slice 2 has no label: not moved
    centred = shift_rows(labels.astype(np.float32), centring_shifts(labels, 7), 0.0)
    assert np.flatnonzero((centred[0] == 7).any(axis=1)).tolist() == [5, 6, 7, 8]
    assert np.flatnonzero((centred[1] == 7).any(axis=1)).tolist() == [5, 6, 7]
    np.testing.assert_array_equal(centred[2], labels[2])

def test_shift_rows_matches_a_row_by_row_shift_with_fill() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 9, 3)).astype(np.float32)
    shifts = np.array([0, 2, -3, 9])
    moved = shift_rows(images, shifts, -1000.0)
    for n, shift in enumerate(shifts):
        np.testing.assert_array_equal(moved[n], slow_shift(images[n], int(shift), -1000.0))
    assert (moved[3] == -1000.0).all()  # moved by the whole height: nothing of the slice is left


def test_shift_rows_back_restores_the_slice_and_keeps_the_original_where_rows_left_the_frame() -> None:
    rng = np.random.default_rng(1)
    original = rng.normal(size=(3, 8, 4)).astype(np.float32)
    shifts = np.array([3, -2, 0])
    edited = shift_rows(original, shifts, 0.0) + np.float32(10.0)  # a step changes every row of the moved slice
    back = shift_rows_back(edited, original, shifts)
    np.testing.assert_array_equal(back[0, :5], original[0, :5] + 10.0)  # rows 5..7 left the frame at the bottom
    np.testing.assert_array_equal(back[0, 5:], original[0, 5:])
    np.testing.assert_array_equal(back[1, 2:], original[1, 2:] + 10.0)  # rows 0..1 left the frame at the top
    np.testing.assert_array_equal(back[1, :2], original[1, :2])
    np.testing.assert_array_equal(back[2], original[2] + 10.0)


def test_shifted_sources_mark_rows_from_outside_the_frame() -> None:
    assert shifted_sources(np.array([2]), 5).tolist() == [[-1, -1, 0, 1, 2]]
    assert shifted_sources(np.array([-1]), 5).tolist() == [[1, 2, 3, 4, -1]]
