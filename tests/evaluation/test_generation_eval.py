"""Generation metrics (docs/design.md, 'Generation metrics') agree with scikit-image called directly; the scripts write
CSV + summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from data.crops import crop_affine, write_crop
from data.image_io import save_nifti
from evaluation import generation_eval_coronal, generation_eval_sagittal
from evaluation.generation_metrics import GENERATION_COLUMNS, GenerationError, generation_metrics, overlap_scores
from util.fileio import write_json

SHAPE = (64, 48, 40)  # (S->I, A->P, R->L)
LABEL = 20


def synthetic_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Original CT/label and a synthesized version (noisy CT, label one row taller) of vertebra 20."""
    rng = np.random.default_rng(seed)
    ct = ndimage.gaussian_filter(rng.normal(0, 300, SHAPE), 2).astype(np.float32) + 200
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[20:44, 10:38, 6:34] = LABEL
    label[4:16, 10:38, 6:34] = LABEL - 1
    fake_ct = (ct + rng.normal(0, 40, SHAPE)).astype(np.float32)
    fake_label = label.copy()
    fake_label[44, 10:38, 6:34] = LABEL
    return ct, fake_ct, label, fake_label


def expected_metrics(ct: np.ndarray, fake_ct: np.ndarray, label: np.ndarray, axis: int) -> dict[str, float]:
    """The metrics computed slice by slice with scikit-image directly."""
    target = label == LABEL
    present = np.flatnonzero(target.any(axis=tuple(a for a in range(3) if a != axis)))
    length = present[-1] - present[0] + 1
    kept = int(length * 4 / 5)
    start = present[0] + (length - kept) // 2
    values: dict[str, list[float]] = {"PSNR": [], "SSIM": [], "PSNR_target_rows": [], "SSIM_target_rows": []}
    for index in range(start, start + kept):
        take = [slice(None)] * 3
        take[axis] = index
        original, fake, mask = ct[tuple(take)].astype(np.float64), fake_ct[tuple(take)].astype(np.float64), \
            target[tuple(take)]
        if mask.sum() <= 400:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        band_o, band_f = original[rows[0]: rows[-1] + 1], fake[rows[0]: rows[-1] + 1]
        for prefix, (o, f) in (("", (original, fake)), ("_target_rows", (band_o, band_f))):
            data_range = o.max() - o.min()
            values["PSNR" + prefix].append(peak_signal_noise_ratio(o, f, data_range=data_range))
            values["SSIM" + prefix].append(structural_similarity(o, f, data_range=data_range))
    return {name: float(np.mean(v)) for name, v in values.items()} | {"n_slices": len(values["PSNR"])}


@pytest.mark.parametrize("plane, axis", [("sagittal", 2), ("coronal", 1)])
def test_metrics_agree_with_scikit_image(plane: str, axis: int) -> None:
    ct, fake_ct, label, fake_label = synthetic_pair()
    metrics = generation_metrics(ct, fake_ct, label, fake_label, LABEL, plane)
    expected = expected_metrics(ct, fake_ct, label, axis)
    assert metrics["n_slices"] == expected["n_slices"] > 0
    for name in ("PSNR", "SSIM", "PSNR_target_rows", "SSIM_target_rows"):
        assert metrics[name] == pytest.approx(expected[name], rel=1e-9), name
    volume = 24 * 28 * 28
    assert metrics["RVD"] == pytest.approx(28 * 28 / volume)
    assert metrics["IoU"] == pytest.approx(volume / (volume + 28 * 28))
    assert metrics["Dice"] == pytest.approx(2 * volume / (2 * volume + 28 * 28))


def test_overlap_scores_of_identical_and_disjoint_masks() -> None:
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:5, 2:5, 2:5] = True
    assert overlap_scores(mask, mask) == {"Dice": 1.0, "IoU": 1.0, "RVD": 0.0}
    assert overlap_scores(mask, np.roll(mask, 4, axis=0))["Dice"] == 0.0
    with pytest.raises(GenerationError, match="original target is empty"):
        overlap_scores(np.zeros_like(mask), mask)


def test_scripts_write_table_and_summary_for_healthy_val_vertebrae(tmp_path: Path, capsys) -> None:
    dataroot, results = tmp_path / "straightened", tmp_path / "results" / "exp"
    affine = crop_affine((1.0, 1.0, 1.0), np.zeros(3), SHAPE)
    for seed, key in enumerate(("ph000_20", "ph001_20", "ph002_20")):
        ct, fake_ct, label, fake_label = synthetic_pair(seed)
        write_crop(dataroot, key, ct, label, affine, {"label": LABEL})
        if key != "ph002_20":  # no synthesis for this one: reported, others still written
            save_nifti(fake_ct, affine, results / "CT_fake" / f"{key}.nii.gz")
            save_nifti(fake_label, affine, results / "label_fake" / f"{key}.nii.gz")
    split = tmp_path / "split.json"
    write_json(split, {"train": {"ph000_20": 0}, "val": {"ph001_20": 0, "ph002_20": 0, "ph003_20": 2}})
    out = results / "generation.csv"
    args = ["--dataroot", str(dataroot), "--fake_dir", str(results), "--split_json", str(split), "--out", str(out)]
    assert generation_eval_sagittal.main(args) == 1
    assert "ph002_20" in capsys.readouterr().err
    table = pd.read_csv(out)
    assert list(table.columns) == GENERATION_COLUMNS
    assert table["Vertebra"].tolist() == ["ph001_20"]  # grade 0 of val only
    ct, fake_ct, label, _ = synthetic_pair(1)
    expected = expected_metrics(np.rint(ct), fake_ct, label, axis=2)  # crops store the CT as int16 HU
    assert table.loc[0, "SSIM"] == pytest.approx(expected["SSIM"], rel=1e-6)
    summary = json.loads((results / "generation_summary.json").read_text(encoding="utf-8"))
    assert summary["n_vertebrae"] == 1 and summary["plane"] == "sagittal"
    assert summary["mean"]["PSNR"] == pytest.approx(table.loc[0, "PSNR"])

    coronal_out = results / "generation_coronal.csv"
    assert generation_eval_coronal.main(args[:-1] + [str(coronal_out), "--splits", "train", "val"]) == 1
    coronal = pd.read_csv(coronal_out)
    assert coronal["Vertebra"].tolist() == ["ph000_20", "ph001_20"]
    assert json.loads((results / "generation_coronal_summary.json").read_text(encoding="utf-8"))["plane"] == "coronal"


def test_generation_settings_from_the_flags_have_the_documented_defaults() -> None:
    """docs/design.md, 'Generation metrics': healthy (grade 0) val vertebrae, slices with > 400 target voxels."""
    from evaluation.generation_metrics import GenerationSettings

    args = generation_eval_sagittal.build_parser("coronal").parse_args([])
    settings = GenerationSettings.from_options(args, plane="coronal")
    assert settings == GenerationSettings("coronal", ("val",), (0,), 400, 50)
    args = generation_eval_sagittal.build_parser("sagittal").parse_args(["--splits", "val", "test", "--grades", "0",
                                                                          "1", "--min_slice_voxels", "10"])
    assert GenerationSettings.from_options(args) == GenerationSettings("sagittal", ("val", "test"), (0, 1), 10)
