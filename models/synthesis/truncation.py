"""``--protocol reference``: the reference's uint8 grey truncation of a step's inputs (docs/design.md, 'Two protocols').

The reference converts the CT and the attention map to uint8 grey levels before every step; these
functions reproduce it on HU slices, including the float32 rounding that makes the reference drop a
level on pixels kept from an earlier step.
"""

from __future__ import annotations

import numpy as np

TRUNCATION_EPS = 1e-4  # grey levels (--protocol reference truncation, see truncate_to_grey)


def reference_float_grey(grey: np.ndarray) -> np.ndarray:
    """Grey levels as the reference holds a step's output: a pixel kept from its uint8 input k is
    ``(((k / 255 - 0.5) / 0.5) + 1) * 127.5`` in float32, often just below k (e.g. 46.999996), so its
    next ``astype(np.uint8)`` drops a level. Values within ``TRUNCATION_EPS`` of an integer are taken
    as such kept levels; others (generated pixels) are returned unchanged. float64 in and out."""
    level = np.rint(grey)
    tensor = (level.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    held = ((tensor + np.float32(1.0)) * np.float32(127.5)).astype(np.float64)
    return np.where(np.abs(grey - level) < TRUNCATION_EPS, held, grey)


def truncate_to_grey(ct_hu: np.ndarray, cam: np.ndarray | None, hu_window: tuple[float, float],
                     stepped: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference's ``astype(np.uint8)`` of a step's inputs, for (N, H, W) slices: CT as grey
    ``hu_window`` -> 0..255 (clipped), truncated, back in HU (float32); attention map truncated to k/255.

    ``stepped`` (N,) marks slices that are the output of an earlier step, whose kept pixels the
    reference holds as float32 just below their level (``reference_float_grey``); other slices hold
    the crop's values, truncated after ``TRUNCATION_EPS`` grey levels absorb the float32 rounding of HU.
    """
    low, high = hu_window
    grey = np.clip((np.asarray(ct_hu, dtype=np.float64) - low) / (high - low) * 255.0, 0.0, 255.0)
    held = grey + TRUNCATION_EPS
    if stepped is not None and np.any(stepped):
        held[stepped] = reference_float_grey(grey[stepped])
    truncated_ct = (np.floor(held) / 255.0 * (high - low) + low).astype(np.float32)
    if cam is None:
        return truncated_ct, None
    levels = np.floor(np.clip(np.asarray(cam, dtype=np.float64), 0.0, 1.0) * 255.0 + TRUNCATION_EPS)
    return truncated_ct, (levels / 255.0).astype(np.float32)
