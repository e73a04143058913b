"""2.5D fusion of a vertebra's sagittal and coronal syntheses (docs/design.md, 'Iterative synthesis').

Each plane keeps a soft target map (the generator's target probability in generated rows, 1 where the
original target remains); a voxel is the target where the mean of the two maps exceeds 0.5 (the
reference's fusion rule), and the CT is the mean of the two planes.
"""

from __future__ import annotations

import numpy as np

from models.synthesis.plane import PlaneSynthesis

FUSED_TARGET_THRESHOLD = 0.5


def fuse_planes(sagittal: PlaneSynthesis, coronal: PlaneSynthesis, target_label: int) -> tuple[np.ndarray, np.ndarray]:
    """2.5D fusion: (CT HU float32, labels uint8) of two planes' syntheses of the same crop.

    CT: the mean of the two planes. Labels: the target where the mean of the two soft target maps
    exceeds 0.5 (the reference's fusion rule); elsewhere the sagittal label unless it is the target,
    then the coronal label unless it is the target, else background.
    """
    ct = (sagittal.ct_hu + coronal.ct_hu) / np.float32(2.0)
    probability = (sagittal.target_probability + coronal.target_probability) / np.float32(2.0)
    sagittal_other = np.where(sagittal.label_map != target_label, sagittal.label_map, 0)
    coronal_other = np.where(coronal.label_map != target_label, coronal.label_map, 0)
    other = np.where(sagittal_other > 0, sagittal_other, coronal_other)
    labels = np.where(probability > FUSED_TARGET_THRESHOLD, target_label, other).astype(np.uint8)
    return ct.astype(np.float32), labels
