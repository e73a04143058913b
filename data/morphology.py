"""Connected components and extents: the one implementation used by every step."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected components (full connectivity) with fewer than ``min_size`` voxels."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mask.any():
        return mask.copy()
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[components]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (full connectivity); empty input gives an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def row_extent(mask2d: np.ndarray) -> tuple[int, int] | None:
    """First and last row (inclusive, axis 0) that contain the mask, or ``None`` when empty."""
    rows = np.flatnonzero(np.asarray(mask2d, dtype=bool).any(axis=tuple(range(1, np.ndim(mask2d)))))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1])
