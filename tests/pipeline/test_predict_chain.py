"""predict.py with a fracture classifier (attention maps into the synthesis) and with synthesized references.

The generator is untrained, so synthesized heights carry no meaning; what is asserted holds whatever the
weights: the measured original heights match the phantom's drawn heights in mm, the RHLV columns follow
from the table's own height columns, the pseudo-healthy CT equals the scan away from the vertebral bodies,
and the attention maps of a (briefly trained) classifier reach the synthesis on every crop.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import predict
from Attention.checkpoint import checkpoint_path
from Attention.training import parse_classifier_options, train_classifier
from data.crops import crop_affine, load_crop, write_crop
from data.labels import split_key, vertebra_name
from data.masking import make_masked_slices
from evaluation.genant import ANATOMICAL_REGIONS
from models.synthesis import dataset as synthesis_dataset
from models.synthesis import plane as synthesis_plane
from tests.Attention.test_attention import synthetic_crop
from tests.phantom_fixtures import make_test_phantom
from tests.pipeline.test_predict import CROP_SIZE, FRACTURED, _one_error_line, write_checkpoint

H_ORI_TOLERANCE_MM = 1.5


@pytest.fixture(scope="module")
def chain_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Phantom T12-L4 (PIR, 0.8 x 1.6 x 1.1 mm, L2 crushed by 45 %), an untrained generator, a tiny classifier."""
    root = tmp_path_factory.mktemp("chain")
    phantom = make_test_phantom(root, case="obl", labels=(19, 20, 21, 22, 23), fractures={FRACTURED: ("crush", 0.45)},
                                orientation="PIR", spacing_mm=(0.8, 1.6, 1.1), seed=3)
    raw = root / "raw" / "obl"
    checkpoints = root / "checkpoints"
    write_checkpoint(checkpoints, "tiny")
    train_tiny_classifier(root / "cls_crops", checkpoints, "cls", CROP_SIZE, 1.0)
    return {"root": root, "ct": raw / "obl.nii.gz", "mask": raw / "obl_msk.nii.gz", "phantom": phantom,
            "checkpoints": checkpoints}


def footprint_synthesis(runner, ct_hu, labels, target_probability, cam, offsets, step_label, is_target, settings,
                        canvas, stepped=None):
    """``synthesize_centred`` with the untrained generator's segmentation replaced by the target's own A-P footprint.

    The untrained generator segments almost nothing, so no synthesized height could be measured. With this
    stand-in the synthesized body spans the original body's columns and is as tall as the (untrained) height
    head says; everything else (masking, CT, heights, composition) is the real chain's.
    """
    located = synthesis_plane.clamp_tall_targets(labels, step_label, settings.mask_height_px,
                                                 settings.min_component_px)
    valid = make_masked_slices(np.zeros(labels.shape, np.float32), located, step_label, None, settings.mask_height_px,
                               settings.min_component_px).valid
    left = (canvas - labels.shape[2]) // 2
    columns = (labels == step_label).any(axis=1)[valid]  # (valid slices, W)

    def with_footprint(masked_ct, slice_offsets, band_mask, cam_slices, mask_height_px):
        fine_ct, fine_seg, fine_height = runner(masked_ct, slice_offsets, band_mask, cam_slices, mask_height_px)
        seg = np.zeros_like(fine_seg)
        seg[:, :, left:left + columns.shape[1]] = columns[:, None, :]
        return fine_ct, seg, fine_height

    return synthesize_centred(with_footprint, ct_hu, labels, target_probability, cam, offsets, step_label, is_target,
                              settings, canvas, stepped)


synthesize_centred = synthesis_plane.synthesize_centred


def train_tiny_classifier(dataroot: Path, checkpoints: Path, name: str, crop_size: list[int], spacing_mm: float,
                          n_cases: int = 4) -> Path:
    """A small-arch classifier trained for one epoch on box-vertebra crops of ``crop_size`` at ``spacing_mm``."""
    rng = np.random.default_rng(0)
    split: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for index in range(n_cases):
        case = f"cls{index}"
        fractured = {21} if index % 2 == 0 else set()
        ct, labels = synthetic_crop(rng, 21, fractured, size=tuple(crop_size))
        key = split_key(case, 21)
        write_crop(dataroot, key, ct, labels, crop_affine([spacing_mm] * 3, np.zeros(3), tuple(crop_size)), {
            "case": case, "label": 21, "name": vertebra_name(21), "crop_size": list(crop_size),
            "spacing_mm": [spacing_mm] * 3, "axes": "IPL", "has_ct": True})
        split["train"][key] = 2 if fractured else 0
    split_json = dataroot.parent / f"{name}_split.json"
    split_json.write_text(json.dumps(split), encoding="utf-8")
    train_classifier(parse_classifier_options([
        "--dataroot", str(dataroot), "--split_json", str(split_json), "--name", name, "--checkpoints_dir",
        str(checkpoints), "--arch", "small", "--gpu_ids", "-1", "--n_epochs", "1", "--n_epochs_decay", "0",
        "--slices_per_vertebra", "2", "--batch_size", "8"]))
    return checkpoint_path(checkpoints, name)


def run(case: dict, out: Path, *extra: str, checkpoints: Path | None = None) -> int:
    return predict.main(["--ct", str(case["ct"]), "--mask", str(case["mask"]), "--name", "tiny", "--case", "obl",
                         "--checkpoints_dir", str(checkpoints or case["checkpoints"]), "--out", str(out),
                         "--no_report", *extra])


def test_synthesized_reference_measures_the_scan_in_mm(chain_case: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(synthesis_plane, "synthesize_centred", footprint_synthesis)
    out = tmp_path / "out"
    assert run(chain_case, out, "--reference", "synthesized") == 0
    table = pd.read_csv(out / "vertebrae.csv")
    measured = table[table["status"] == "ok"]
    assert FRACTURED in set(measured["verse_id"]) and len(measured) >= 3
    assert (measured["reference"] == "synthesized").all()
    truth = {v["label"]: v for v in chain_case["phantom"].truth["vertebrae"]}
    for row in measured.itertuples():
        drawn = truth[row.verse_id]["height_post_mm"]
        for region in ANATOMICAL_REGIONS:
            measured_mm = getattr(row, f"H_ori_{region}_mm")
            assert abs(measured_mm - drawn[region]) < H_ORI_TOLERANCE_MM, (row.name, region, measured_mm, drawn[region])
        for region in (*ANATOMICAL_REGIONS, "whole"):
            h_syn, h_ori = getattr(row, f"H_syn_{region}_mm"), getattr(row, f"H_ori_{region}_mm")
            rhlv = getattr(row, f"RHLV_{region}")
            assert rhlv == pytest.approx((h_syn - h_ori) / h_syn, abs=2e-4), (row.name, region)
        largest = max(getattr(row, f"RHLV_{r}") for r in ANATOMICAL_REGIONS)
        assert row.RHLV_max_regional == pytest.approx(largest, abs=1e-4)

    ct = nib.load(str(chain_case["ct"]))
    pseudo = nib.load(str(out / "pseudo_healthy_ct.nii.gz"))
    assert pseudo.shape == ct.shape and np.abs(pseudo.affine - ct.affine).max() < 1e-4
    # away from the vertebrae the pseudo-healthy CT is the scan, voxel for voxel; the margin: a synthesized body
    # is at most the 40 mm band tall (<= 9 mm past a ~22 mm body's endplates) plus the 2-voxel paste margin
    mask = np.asanyarray(nib.load(str(chain_case["mask"])).dataobj)
    spacing = np.linalg.norm(ct.affine[:3, :3], axis=0)
    far = ndimage.distance_transform_edt(mask == 0, sampling=spacing) >= 12.0
    original = np.rint(np.asanyarray(ct.dataobj))
    synthesized = np.asanyarray(pseudo.dataobj)
    assert np.array_equal(synthesized[far], original[far])
    assert (synthesized[~far] != original[~far]).any()


def test_classifier_attention_maps_reach_the_synthesis(chain_case: dict, tmp_path: Path, monkeypatch) -> None:
    loaded: dict[str, np.ndarray] = {}
    load_attention = synthesis_dataset.load_attention

    def spy(cam_dir, crop, label_path):
        cam = load_attention(cam_dir, crop, label_path)
        loaded[crop.key] = cam
        return cam

    monkeypatch.setattr(synthesis_dataset, "load_attention", spy)
    out = tmp_path / "out"
    assert run(chain_case, out, "--classifier", "cls", "--reference", "neighbours", "--keep_work") == 0
    table = pd.read_csv(out / "vertebrae.csv")
    work = next(out.glob(".predict-work-*"))
    crops = work / "straightened"
    written = sorted(p.name.removesuffix(".nii.gz") for p in (crops / "label").glob("*.nii.gz"))
    assert set(table.loc[table["status"] == "ok", "Vertebra"]) <= set(written)
    assert set(loaded) == set(written)  # every crop went through the synthesis with its map
    for key in written:
        crop = load_crop(crops, key, need_ct=False)
        image = nib.load(str(work / "heatmap" / f"{key}.nii.gz"))
        cam = np.asanyarray(image.dataobj)
        assert cam.shape == crop.label_map.shape and np.abs(image.affine - crop.affine).max() < 1e-5
        assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() > 0.0
        assert loaded[key] is not None and np.array_equal(loaded[key], cam)


def test_missing_classifier_is_a_one_line_error(chain_case: dict, tmp_path: Path, capsys) -> None:
    assert run(chain_case, tmp_path / "out", "--classifier", "never_trained") == 1
    line = _one_error_line(capsys)
    assert str(checkpoint_path(chain_case["checkpoints"], "never_trained")) in line and "not found" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("crop_size, spacing_mm, message", [
    ([64, 64, 32], 1.0, "classifier trained on [64, 64, 32] crops, the generator on [96, 96, 48] crops"),
    (CROP_SIZE, 2.0, "classifier trained on 2x2x2 mm crops, the generator on 1 mm crops"),
])
def test_classifier_of_another_crop_geometry_is_refused(chain_case: dict, tmp_path: Path, capsys,
                                                        crop_size: list[int], spacing_mm: float, message: str) -> None:
    checkpoints = tmp_path / "checkpoints"
    write_checkpoint(checkpoints, "tiny")
    path = train_tiny_classifier(tmp_path / "crops", checkpoints, "other", crop_size, spacing_mm, n_cases=2)
    capsys.readouterr()  # the training's progress bars
    assert run(chain_case, tmp_path / "out", "--classifier", "other", checkpoints=checkpoints) == 1
    line = _one_error_line(capsys)
    assert str(path) in line and message in line
    assert not (tmp_path / "out").exists()
