"""Attention (HGAM) on a phantom cohort: both scripts end to end on CPU, held-out classification,
map localisation, and the GAN dataset reading the maps (slow: a cohort is generated and a classifier trained)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from Attention.checkpoint import checkpoint_path, load_classifier
from Attention.slices import SliceInput, load_vertebra_slices
from Attention.training import evaluate
from data.aligned_dataset import AlignedDataset
from data.crops import list_crop_keys, load_crop, read_split
from data.labels import split_key
from data.phantoms.cohort import make_cohort
from straighten.pipeline import straighten_root

pytestmark = pytest.mark.slow

CASES = 12  # 8 train, 2 val, 2 test cases of T10-L5 (8 vertebrae each, about a third fractured)
SEED = 5
CROP_SIZE = (96, 40, 24)  # 192 x 80 x 48 mm at 2 mm: few voxels for CPU training, yet tall like real crops
# (in a crop barely taller than three bodies the classifier learns the neighbours' distance to the crop
# border instead of the body's shape, and its maps leave the fractured body)
CROP_SPACING_MM = 2.0
N_SLICES = 12  # central 24 mm (the default 30 slices would exceed this crop's width)
TRAIN_FLAGS = ["--arch", "small", "--n_epochs", "8", "--n_epochs_decay", "8", "--n_slices", str(N_SLICES),
               "--max_shift", "8"]


def run_script(repo_root: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run a script from the repository root on CPU (one thread: fastest on a busy machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, *argv], cwd=repo_root, capture_output=True, encoding="utf-8", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root) -> dict[str, Path]:
    """Phantom cohort -> straightened crops -> classifier (train script) -> maps (CAM script, default --out)."""
    root = tmp_path_factory.mktemp("attention_phantoms")
    _, failures = make_cohort(root, CASES, SEED, progress=False, spacing_mm=(1.0, 1.0, 1.0), margin_mm=8.0)
    assert not failures, failures
    results = straighten_root(root, crop_size=CROP_SIZE, spacing_mm=CROP_SPACING_MM)
    assert not any(r.failed for r in results), [r.error for r in results if r.failed]
    dataroot, split_json, checkpoints = root / "straightened", root / "vertebra_data.json", root / "checkpoints"
    run_script(repo_root, "Attention/train_classifier.py", "--dataroot", str(dataroot), "--split_json",
               str(split_json), "--name", "phantom_cls", "--checkpoints_dir", str(checkpoints), "--gpu_ids", "-1",
               *TRAIN_FLAGS)
    run_script(repo_root, "Attention/grad_CAM_3d_sagittal.py", "--dataroot", str(dataroot), "--name", "phantom_cls",
               "--checkpoints_dir", str(checkpoints), "--gpu_ids", "-1", "--n_slices", str(N_SLICES))
    return {"root": root, "dataroot": dataroot, "split_json": split_json, "checkpoints": checkpoints,
            "heatmap": root / "heatmap"}


def held_out(split_json: Path) -> dict[str, int]:
    """Grades of the val and test vertebrae (cases the classifier never trained on)."""
    split = read_split(split_json)
    return {**split["val"], **split["test"]}


def test_every_crop_has_a_map_and_png(trained):
    keys = list_crop_keys(trained["dataroot"])
    assert keys
    for key in keys:
        image = nib.load(trained["heatmap"] / f"{key}.nii.gz")
        crop = load_crop(trained["dataroot"], key, need_ct=False)
        cam = np.asarray(image.dataobj)
        assert cam.shape == crop.label_map.shape == CROP_SIZE and cam.dtype == np.float32
        np.testing.assert_allclose(image.affine, crop.affine, atol=1e-5)
        assert 0.0 <= cam.min() and cam.max() <= 1.0
        assert (trained["heatmap"] / f"{key}.png").is_file()


def test_classifier_separates_held_out_phantoms(trained):
    model, checkpoint = load_classifier(checkpoint_path(trained["checkpoints"], "phantom_cls"))
    assert checkpoint["arch"] == "small"
    vertebrae, skipped = load_vertebra_slices(trained["dataroot"], held_out(trained["split_json"]), 1, N_SLICES,
                                              50, SliceInput.from_checkpoint(checkpoint))
    assert not skipped
    metrics = evaluate(model, vertebrae, torch.device("cpu"), 16)
    assert metrics["n_fractured"] >= 4 and metrics["n_healthy"] >= 4
    assert metrics["balanced_accuracy"] > 0.7, metrics


def test_maps_put_more_mass_on_the_fractured_body_than_on_a_healthy_neighbour(trained):
    grades = held_out(trained["split_json"])
    outcomes = []
    for key, grade in grades.items():
        crop = load_crop(trained["dataroot"], key, need_ct=False)
        healthy_neighbours = [lab for lab in (crop.label - 1, crop.label + 1)
                              if grades.get(split_key(crop.case, lab)) == 0 and (crop.label_map == lab).any()]
        if grade < 1 or not healthy_neighbours:
            continue
        cam = np.asarray(nib.load(trained["heatmap"] / f"{key}.nii.gz").dataobj)
        target_mass = cam[crop.label_map == crop.label].sum()
        neighbour_mass = max(cam[crop.label_map == lab].sum() for lab in healthy_neighbours)
        outcomes.append(target_mass > neighbour_mass)
    assert len(outcomes) >= 4
    assert np.mean(outcomes) > 0.5, outcomes


def test_gan_dataset_reads_the_maps(trained):
    parser = AlignedDataset.modify_commandline_options(argparse.ArgumentParser(), True)
    opt = parser.parse_args([])
    for name, value in dict(dataroot=str(trained["dataroot"]), split_json=str(trained["split_json"]),
                            cam_dir=str(trained["heatmap"]), phase="train", plane="sagittal",
                            cache_dir=str(trained["root"] / "cache"), seed=0,
                            max_dataset_size=math.inf).items():
        setattr(opt, name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missing map would warn
        dataset = AlignedDataset(opt, show_progress=False)
    assert len(dataset) > 0
    cams = [dataset[i]["cam"] for i in range(len(dataset))]
    assert all(c.min() >= 0 and c.max() <= 1 for c in cams)
    assert sum(float(c.max()) > 0 for c in cams) >= len(cams) // 2
