"""2.5D fusion (models/synthesis/fusion.py): CT mean, target vote on the mean probability, other labels."""

from __future__ import annotations

import numpy as np

from models.synthesis.fusion import FUSED_TARGET_THRESHOLD, fuse_planes
from models.synthesis.plane import PlaneSynthesis, synthesize_plane
from models.synthesis.runner import GeneratorRunner
from models.synthesis.settings import SynthesisSettings
from tests.models.test_synthesis import TARGET, ToyGenerator, crop_arrays
from tests.synthetic_crops import CROP_SIZE, WIDE_WINDOW


def plane(name: str, ct: list[float], labels: list[int], probability: list[float]) -> PlaneSynthesis:
    shape = (1, 1, len(ct))
    return PlaneSynthesis(name, np.array(ct, np.float32).reshape(shape), np.array(labels, np.uint8).reshape(shape),
                          np.array(probability, np.float32).reshape(shape), [])


def test_fusion_votes_on_the_mean_target_probability_and_keeps_the_other_labels() -> None:
    target, upper, lower = 20, 19, 21
    sagittal = plane("sagittal", [100, 200, 0, -50, 30], [target, target, upper, 0, target], [0.9, 0.6, 0.0, 0.0, 0.4])
    coronal = plane("coronal", [300, 0, 10, 50, 30], [0, target, upper, lower, target], [0.2, 0.3, 0.0, 0.0, 0.59])
    ct, labels = fuse_planes(sagittal, coronal, target)
    np.testing.assert_allclose(ct.ravel(), [200, 100, 5, 0, 30])
    # mean probabilities 0.55 (target), 0.45 and 0.495 (not), 0 and 0 (the labels of either plane)
    assert FUSED_TARGET_THRESHOLD == 0.5
    assert labels.ravel().tolist() == [target, 0, upper, lower, 0]
    assert ct.dtype == np.float32 and labels.dtype == np.uint8


def test_fusion_of_two_syntheses_of_one_crop() -> None:
    ct, label_map, cam = crop_arrays()
    settings = SynthesisSettings(16, WIDE_WINDOW, neighbour_min_px=60)
    runner = GeneratorRunner(ToyGenerator())
    sagittal = synthesize_plane(runner, ct, label_map, cam, TARGET, "sagittal", settings)
    coronal = synthesize_plane(runner, ct, label_map, cam, TARGET, "coronal", settings)
    fused_ct, fused_labels = fuse_planes(sagittal, coronal, TARGET)
    assert fused_ct.shape == fused_labels.shape == CROP_SIZE
    np.testing.assert_allclose(fused_ct, (sagittal.ct_hu + coronal.ct_hu) / 2)
    both = (sagittal.label_map == TARGET) & (coronal.label_map == TARGET)
    assert (fused_labels[both] == TARGET).all()
    assert set(np.unique(fused_labels)) <= set(np.unique(sagittal.label_map)) | set(np.unique(coronal.label_map))
