"""Moving (N, H, W) slices vertically by whole rows and back (docs/design.md, 'Iterative synthesis').

A neighbour step presents each slice as the generator saw it in training, with the neighbour's centre
row on row H // 2 (``centring_shifts``), then moves the composed slice back (``shift_rows_back``).
Shifts are in rows (positive: down, towards inferior).
"""

from __future__ import annotations

import numpy as np

from data.masking import gather_rows


def centring_shifts(label_slices: np.ndarray, label: int) -> np.ndarray:
    """(N,) int64 rows to move each (N, H, W) slice down so that the centre row of ``label`` (its mean
    pixel row, truncated as in ``clamp_tall_targets``) lands on row H // 2, the row straightened crops
    centre the target on (what the generator saw in training); 0 where the label is absent."""
    pixels_per_row = (np.asarray(label_slices) == label).sum(axis=2)
    counts = pixels_per_row.sum(axis=1)
    centre = (pixels_per_row @ np.arange(pixels_per_row.shape[1])) // np.maximum(counts, 1)
    return np.where(counts > 0, pixels_per_row.shape[1] // 2 - centre, 0).astype(np.int64)


def shifted_sources(shifts: np.ndarray, image_rows: int) -> np.ndarray:
    """(N, image_rows) source row of every row of slices moved down by ``shifts`` (N,) rows; -1 where
    the row comes from outside the frame."""
    sources = np.arange(image_rows)[None, :] - np.asarray(shifts)[:, None]
    return np.where((sources >= 0) & (sources < image_rows), sources, -1)


def shift_rows(images: np.ndarray, shifts: np.ndarray, fill_value: float) -> np.ndarray:
    """(N, H, W) float32 ``images`` moved down by ``shifts`` (N,) rows (up where negative), rows moved in
    from outside the frame set to ``fill_value``."""
    return gather_rows(images, shifted_sources(shifts, images.shape[1]), fill_value)


def shift_rows_back(shifted: np.ndarray, original: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Inverse of ``shift_rows(original, shifts, ...)`` for (N, H, W) ``shifted`` (float32): rows that
    were moved out of the frame are taken from ``original``."""
    sources = shifted_sources(-np.asarray(shifts), shifted.shape[1])
    return np.where((sources < 0)[:, :, None], original, gather_rows(shifted, sources, 0.0))
