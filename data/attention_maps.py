"""Attention maps on the crop grid (docs/design.md, 'Attention maps'): the one reader of ``<cam_dir>/<key>.nii.gz``.

A map is float32 in [0, 1] with the label crop's grid (shape and affine); values outside [0, 1] are
clipped. The training crop cache and the synthesis both read maps through :func:`load_attention_map`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.image_io import Volume, check_same_grid, load_ct


def attention_map_path(cam_dir: str | Path, key: str) -> Path:
    """``<cam_dir>/<key>.nii.gz``."""
    return Path(cam_dir) / f"{key}.nii.gz"


def load_attention_map(path: str | Path, label_crop: Volume) -> np.ndarray:
    """The map at ``path`` as float32 in [0, 1] (axes of the crop: S->I, A->P, R->L).

    Raises ``data.image_io.ImageIOError`` naming ``path`` when it cannot be read or its grid is not
    ``label_crop``'s.
    """
    cam = load_ct(path)
    check_same_grid(label_crop, cam)
    return np.clip(cam.array, 0.0, 1.0).astype(np.float32)
