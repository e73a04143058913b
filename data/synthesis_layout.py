"""Where a synthesis run's volumes live (docs/design.md, 'Synthesis outputs and provenance').

``<root>/CT_fake/<key>.nii.gz`` (int16 HU) and ``<root>/label_fake/<key>.nii.gz`` (uint8 VerSe ids) on
the crop grid, and ``<root>/provenance/<key>.json`` (checkpoints, options and inputs they came from).
Every reader and writer of these files takes the paths from :class:`OutputLayout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.image_io import save_nifti
from util.fileio import prepare_output_dir, read_json, write_json

CT_FOLDER = "CT_fake"
LABEL_FOLDER = "label_fake"
PROVENANCE_FOLDER = "provenance"


@dataclass(frozen=True)
class OutputLayout:
    """Where the synthesized volumes go: ``<root>/CT_fake/<key>.nii.gz``, ``<root>/label_fake/<key>.nii.gz``
    and their provenance record ``<root>/provenance/<key>.json`` (checkpoints, options and inputs they came from)."""

    root: Path

    @property
    def ct_dir(self) -> Path:
        return self.root / CT_FOLDER

    @property
    def label_dir(self) -> Path:
        return self.root / LABEL_FOLDER

    def ct(self, key: str) -> Path:
        return self.ct_dir / f"{key}.nii.gz"

    def label(self, key: str) -> Path:
        return self.label_dir / f"{key}.nii.gz"

    def record(self, key: str) -> Path:
        return self.root / PROVENANCE_FOLDER / f"{key}.json"

    def exists(self, key: str) -> bool:
        """Both volumes of ``key`` exist (they are written atomically, CT first, the record last)."""
        return self.ct(key).is_file() and self.label(key).is_file()

    def done(self, key: str, provenance: dict[str, Any]) -> bool:
        """Both volumes exist and were made from exactly ``provenance`` (same checkpoints, options, inputs)."""
        if not self.exists(key) or not self.record(key).is_file():
            return False
        try:
            return read_json(self.record(key)) == provenance
        except ValueError:
            return False

    def write(self, key: str, ct_hu: np.ndarray, label_map: np.ndarray, affine: np.ndarray,
              provenance: dict[str, Any]) -> None:
        """int16 HU CT and uint8 labels on the crop grid, then the provenance record, each written atomically."""
        self.record(key).unlink(missing_ok=True)  # volumes and record must never disagree, even if killed mid-way
        hu = np.clip(np.rint(ct_hu), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
        save_nifti(hu, affine, self.ct(key))
        save_nifti(np.asarray(label_map, dtype=np.uint8), affine, self.label(key))
        write_json(self.record(key), provenance)

    def prepare(self) -> None:
        """Prove the output folders writable and remove partial files of killed runs (before any work)."""
        for folder in (CT_FOLDER, LABEL_FOLDER, PROVENANCE_FOLDER):
            prepare_output_dir(self.root / folder, "synthesis output folder (--results_dir/--name)")
