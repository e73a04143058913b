"""Attention (HGAM): classifier training, Grad-CAM++ maps, checkpoints and errors, on synthetic crops."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from Attention.cam import (
    cam_volume,
    fracture_cam,
    generate_maps,
    minmax_per_slice,
    parse_cam_options,
    resolve_windows,
    vertebra_windows,
)
from Attention.checkpoint import checkpoint_path, load_classifier
from Attention.grad_CAM_3d_sagittal import main as grad_cam_main
from Attention.networks import build_classifier
from Attention.slices import SliceInput, central_sagittal_slices, sagittal_slices
from Attention.training import parse_classifier_options, train_classifier
from data.crops import Crop, crop_affine, crop_paths, load_crop, write_crop
from data.labels import split_key, vertebra_name

CROP_SIZE = (64, 48, 40)  # (S->I, A->P, R->L) voxels; 40 slices so that 10 lie outside the central 30
SPACING_MM = (1.0, 1.0, 1.0)
BODY_HEIGHT_MM = 14.0
DISC_MM = 6.0


def synthetic_crop(rng: np.random.Generator, target_label: int, fractured: set[int],
                   size: tuple[int, int, int] = CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """CT (HU) and label crop of a column of three box-like bodies centred on ``target_label``.

    Bodies have an ~800 HU shell and ~200 HU core, discs 80 HU, soft tissue 40 HU; a fractured body
    keeps 55 % of its height (a crush fracture). Arrays are (S->I, A->P, R->L).
    """
    ct = rng.normal(40.0, 15.0, size).astype(np.float32)
    labels = np.zeros(size, dtype=np.uint8)
    rows = np.arange(size[0])[:, None, None]
    cols = np.arange(size[1])[None, :, None]
    lat = np.arange(size[2])[None, None, :]
    centre_row, centre_col, centre_lat = size[0] // 2, size[1] // 2 - 4, size[2] // 2
    in_section = ((cols - centre_col) / 10.0) ** 2 + ((lat - centre_lat) / 13.0) ** 2 <= 1.0
    shell_section = ((cols - centre_col) / 8.5) ** 2 + ((lat - centre_lat) / 11.5) ** 2 > 1.0
    pitch = BODY_HEIGHT_MM + DISC_MM
    for offset in (-1, 0, 1):
        label = target_label + offset
        body_centre = centre_row + offset * pitch
        height = BODY_HEIGHT_MM * (0.55 if label in fractured else 1.0)
        top, bottom = int(round(body_centre - height / 2)), int(round(body_centre + height / 2))
        body_rows = (rows >= top) & (rows < bottom)
        body = body_rows & in_section
        shell = body & (shell_section | (rows < top + 2) | (rows >= bottom - 2))
        ct[body] = rng.normal(200.0, 30.0, int(body.sum()))
        ct[shell] = rng.normal(800.0, 60.0, int(shell.sum()))
        labels[body] = label
        disc_top = int(round(body_centre + BODY_HEIGHT_MM / 2))
        disc = (rows >= bottom) & (rows < disc_top + int(DISC_MM)) & in_section & (labels == 0)
        ct[disc] = rng.normal(80.0, 10.0, int(disc.sum()))
    return ct, labels


def write_synthetic_cohort(root: Path, n_cases: int, seed: int) -> dict[str, dict[str, int]]:
    """Crops of labels 20-22 per case (one of them fractured in half of the cases) and their split."""
    rng = np.random.default_rng(seed)
    split: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for case_index in range(n_cases):
        case = f"syn{case_index:03d}"
        fractured = {int(rng.integers(20, 23))} if case_index % 2 == 0 else set()
        phase = "val" if case_index % 4 in (1, 2) and case_index >= 4 else "train"
        for label in (20, 21, 22):
            ct, labels = synthetic_crop(rng, label, fractured)
            key = split_key(case, label)
            affine = crop_affine(SPACING_MM, np.array([0.0, 0.0, -20.0 * label]), CROP_SIZE)
            write_crop(root, key, ct, labels, affine, {
                "case": case, "label": label, "name": vertebra_name(label), "crop_size": list(CROP_SIZE),
                "spacing_mm": list(SPACING_MM), "axes": "IPL", "centre_voxel": [s // 2 for s in CROP_SIZE],
                "has_ct": True, "labels_in_crop": sorted(int(v) for v in np.unique(labels) if v),
            })
            split[phase][key] = 2 if label in fractured else 0
    return split


def synthetic_crop_object(rng: np.random.Generator, target_label: int, fractured: set[int]) -> Crop:
    """:func:`synthetic_crop` as a ``data.crops.Crop`` (1 mm voxels)."""
    ct, labels = synthetic_crop(rng, target_label, fractured)
    affine = crop_affine(SPACING_MM, np.zeros(3), CROP_SIZE)
    return Crop(split_key("syn", target_label), "syn", target_label, labels, ct, affine, {})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    """A synthetic straightened cohort, its split JSON and a briefly trained small classifier."""
    root = tmp_path_factory.mktemp("attention")
    dataroot = root / "straightened"
    split = write_synthetic_cohort(dataroot, n_cases=8, seed=3)
    split_json = root / "vertebra_data.json"
    split_json.write_text(json.dumps(split), encoding="utf-8")
    opt = classifier_options(dataroot, split_json, root / "checkpoints", "syn")
    metrics = train_classifier(opt)
    return {"root": root, "dataroot": dataroot, "split_json": split_json, "checkpoints": root / "checkpoints",
            "metrics": metrics}


def classifier_options(dataroot: Path, split_json: Path, checkpoints: Path, name: str, *extra: str):
    """Options of a short CPU training run."""
    return parse_classifier_options([
        "--dataroot", str(dataroot), "--split_json", str(split_json), "--name", name,
        "--checkpoints_dir", str(checkpoints), "--arch", "small", "--gpu_ids", "-1",
        "--n_epochs", "1", "--n_epochs_decay", "1", "--slices_per_vertebra", "2", "--batch_size", "8", *extra,
    ])


def cam_options(cohort: dict[str, Path], out: Path, *extra: str):
    """Options of a CPU map run into ``out``."""
    return parse_cam_options([
        "--dataroot", str(cohort["dataroot"]), "--name", "syn", "--checkpoints_dir", str(cohort["checkpoints"]),
        "--out", str(out), "--gpu_ids", "-1", *extra,
    ])


def test_minmax_per_slice():
    maps = np.stack([np.full((4, 5), 3.0), np.arange(20.0).reshape(4, 5)])
    scaled = minmax_per_slice(maps)
    assert np.all(scaled[0] == 0) and scaled[1].min() == 0 and scaled[1].max() == 1


@pytest.mark.parametrize("arch", ["small", "seresnet50"])
def test_cam_volume_on_both_archs(arch):
    torch.manual_seed(0)
    model = build_classifier(arch).eval()
    crop = synthetic_crop_object(np.random.default_rng(0), 21, {21})
    result = cam_volume(model, crop, SliceInput((-300.0, 800.0)), n_slices=6, batch_size=4)
    assert result.volume.shape == crop.ct_hu.shape and result.volume.dtype == np.float32
    assert result.slice_range == (17, 23)
    assert np.all(result.volume[:, :, :17] == 0) and np.all(result.volume[:, :, 23:] == 0)
    assert 0.0 <= result.volume.min() and result.volume.max() <= 1.0
    assert 0.0 <= result.fracture_probability <= 1.0


def test_volume_normalisation_keeps_relative_strength_and_the_view_limits_the_map():
    torch.manual_seed(0)
    model = build_classifier("small").eval()
    ct, _ = synthetic_crop(np.random.default_rng(1), 21, {21})
    images = torch.from_numpy(sagittal_slices(ct, range(14, 20), (-300.0, 800.0)))
    per_slice, p_slice = fracture_cam(model, images, 4, "slice")
    per_volume, p_volume = fracture_cam(model, images, 4, "volume")
    np.testing.assert_allclose(p_slice, p_volume, rtol=1e-5)
    assert per_volume.max() == pytest.approx(1.0) and per_volume.max(axis=(1, 2)).min() < 1.0
    for a, b in zip(per_slice, per_volume):  # the same map up to the package's per-image scaling
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="unknown CAM normalisation 'max'"):
        fracture_cam(model, images, 4, "max")
    crop = synthetic_crop_object(np.random.default_rng(1), 21, {21})
    result = cam_volume(model, crop, SliceInput((-300.0, 800.0), view_mm=24.0), n_slices=6, batch_size=4,
                        normalise="volume", windows="target")
    assert np.all(result.volume[:20] == 0) and np.all(result.volume[44:] == 0)  # central 24 of 64 rows
    assert result.volume[20:44, :, 17:23].max() == pytest.approx(1.0)


def test_vertebra_windows_are_the_view_moved_to_each_whole_vertebra():
    labels = np.zeros((64, 8, 4), dtype=np.uint8)
    labels[0:6] = 19  # touches the first row: truncated by the crop, no window
    labels[10:24] = 20  # mean row 16.5
    labels[26:40] = 21  # the target, mean row 32.5
    labels[42:56] = 22  # mean row 48.5
    labels[58:63] = 23  # its window would end at row 68 > 64
    assert vertebra_windows(labels, 21, (22, 42)) == {21: (22, 42), 20: (6, 26), 22: (38, 58)}
    assert vertebra_windows(labels, 30, (22, 42)) == {30: (22, 42)}  # target absent: only its own view


def test_windows_choice_follows_the_classifier_view():
    assert resolve_windows("auto", SliceInput(view_mm=40.0)) == "vertebrae"
    assert resolve_windows("auto", SliceInput()) == "target"
    assert resolve_windows("target", SliceInput(view_mm=40.0)) == "target"
    with pytest.raises(ValueError, match="needs a classifier trained with --view_mm"):
        resolve_windows("vertebrae", SliceInput())
    with pytest.raises(ValueError, match="unknown --windows 'all'"):
        resolve_windows("all", SliceInput(view_mm=40.0))


class _FixedProbability(torch.nn.Module):
    """A classifier whose fracture logit is a per-image constant read off the image's mean (for tests):
    brighter windows are 'more fractured'; its feature map ``layer4`` is the image itself (a 1x1
    convolution of weight 1)."""

    def __init__(self) -> None:
        super().__init__()
        identity = torch.nn.Conv2d(1, 1, 1)
        torch.nn.init.ones_(identity.weight)
        torch.nn.init.zeros_(identity.bias)
        self.layer4 = torch.nn.Sequential(identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.layer4(x)
        score = 8.0 * features.mean(dim=(1, 2, 3))
        return torch.stack([-score, score], dim=1)


def test_vertebra_windows_weight_each_map_by_that_vertebras_fracture_probability():
    crop = synthetic_crop_object(np.random.default_rng(2), 21, {21})
    view = SliceInput((-300.0, 800.0), view_mm=20.0)
    model = _FixedProbability().eval()
    result = cam_volume(model, crop, view, n_slices=6, batch_size=4, normalise="volume", windows="vertebrae")
    assert set(result.vertebra_probability) == {20, 21, 22}
    assert result.fracture_probability == result.vertebra_probability[21]
    alone = cam_volume(model, crop, view, n_slices=6, batch_size=4, normalise="volume", windows="target")
    assert alone.fracture_probability == pytest.approx(result.fracture_probability)
    target_rows = view.rows(CROP_SIZE[0], 1.0)
    windows = vertebra_windows(crop.label_map, 21, target_rows)
    for label, (start, stop) in windows.items():
        own = result.volume[start:stop, :, 17:23]  # each window's peak is its vertebra's probability
        outside_others = np.ones(CROP_SIZE[0], dtype=bool)
        for other, (o_start, o_stop) in windows.items():
            if other != label:
                outside_others[o_start:o_stop] = False
        rows = np.flatnonzero(outside_others[start:stop])
        assert own[rows].max() <= result.vertebra_probability[label] + 1e-6
    assert result.volume.max() == pytest.approx(max(result.vertebra_probability.values()), rel=1e-5)
    outside = np.ones(CROP_SIZE[0], dtype=bool)
    for start, stop in windows.values():
        outside[start:stop] = False
    assert np.all(result.volume[outside] == 0)


def test_training_writes_weights_only_checkpoint_and_metrics(cohort):
    metrics = cohort["metrics"]
    assert set(metrics) >= {"balanced_accuracy", "auc", "confusion_matrix", "seconds_per_epoch", "checkpoint"}
    assert np.sum(metrics["confusion_matrix"]) == metrics["n_healthy"] + metrics["n_fractured"] > 0
    path = checkpoint_path(cohort["checkpoints"], "syn")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["arch"] == "small" and state["options"]["arch"] == "small"
    assert state["options"]["split_json"] == str(cohort["split_json"])
    model, _ = load_classifier(path)
    assert not model.training
    log = (path.parent / "classifier_log.csv").read_text(encoding="utf-8").splitlines()
    assert log[0].startswith("epoch,") and len(log) == 3


def test_maps_shape_grid_range_and_central_slices(cohort, tmp_path):
    out = tmp_path / "heatmap"
    keys = [split_key("syn000", 20), split_key("syn004", 21), split_key("syn005", 22)]
    summary = generate_maps(cam_options(cohort, out, "--keys", *keys))
    assert summary["written"] == keys and not summary["failed"]
    start, stop = central_sagittal_slices(CROP_SIZE[2], 30)
    for key in keys:
        image = nib.load(out / f"{key}.nii.gz")
        crop = load_crop(cohort["dataroot"], key, need_ct=False)
        cam = np.asarray(image.dataobj)
        assert cam.shape == crop.label_map.shape and cam.dtype == np.float32
        np.testing.assert_allclose(image.affine, crop.affine, atol=1e-5)
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        assert np.all(cam[:, :, :start] == 0) and np.all(cam[:, :, stop:] == 0)
        slice_max = cam[:, :, start:stop].max(axis=(0, 1))
        assert np.all(np.isclose(slice_max, 1.0) | (slice_max == 0)) and slice_max.max() == pytest.approx(1.0)
        assert (out / f"{key}.png").stat().st_size > 0
    assert set(summary["fracture_probability"]) == set(keys)


def test_maps_are_resumable(cohort, tmp_path):
    out = tmp_path / "heatmap"
    key = split_key("syn000", 21)
    generate_maps(cam_options(cohort, out, "--keys", key, "--no_png"))
    stamp = (out / f"{key}.nii.gz").stat().st_mtime_ns
    again = generate_maps(cam_options(cohort, out, "--keys", key, "--no_png"))
    assert again["skipped"] == [key] and again["written"] == []
    assert (out / f"{key}.nii.gz").stat().st_mtime_ns == stamp
    redo = generate_maps(cam_options(cohort, out, "--keys", key, "--no_png", "--overwrite"))
    assert redo["written"] == [key]


def test_maps_follow_the_checkpoint_view(cohort, tmp_path):
    """A classifier trained with --view_mm 24 is read on the central 24 mm of rows (1 mm crops): zero elsewhere."""
    state = torch.load(checkpoint_path(cohort["checkpoints"], "syn"), weights_only=True)
    state["view_mm"] = 24.0
    viewed = tmp_path / "checkpoints"
    checkpoint_path(viewed, "syn").parent.mkdir(parents=True)
    torch.save(state, checkpoint_path(viewed, "syn"))
    key = split_key("syn002", 22)
    opt = cam_options(cohort, tmp_path / "heatmap", "--keys", key, "--no_png", "--normalise", "volume",
                      "--windows", "target")
    opt.checkpoints_dir = viewed
    generate_maps(opt)
    cam = np.asarray(nib.load(tmp_path / "heatmap" / f"{key}.nii.gz").dataobj)
    assert np.all(cam[:20] == 0) and np.all(cam[44:] == 0) and cam[20:44].max() == pytest.approx(1.0)


def test_training_and_maps_are_deterministic_for_a_seed(cohort, tmp_path):
    first = train_classifier(classifier_options(cohort["dataroot"], cohort["split_json"], tmp_path, "a"))
    second = train_classifier(classifier_options(cohort["dataroot"], cohort["split_json"], tmp_path, "b"))
    weights_a = torch.load(first["checkpoint"], weights_only=True)["state_dict"]
    weights_b = torch.load(second["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    key = split_key("syn001", 20)
    maps = []
    for name in ("a", "b"):
        opt = parse_cam_options(["--dataroot", str(cohort["dataroot"]), "--name", name, "--checkpoints_dir",
                                 str(tmp_path), "--out", str(tmp_path / name), "--gpu_ids", "-1", "--keys", key,
                                 "--no_png"])
        generate_maps(opt)
        maps.append(np.asarray(nib.load(tmp_path / name / f"{key}.nii.gz").dataobj))
    np.testing.assert_array_equal(maps[0], maps[1])


def test_missing_checkpoint_is_a_clear_error(cohort, tmp_path, capsys):
    opt = cam_options(cohort, tmp_path / "heatmap")
    opt.name = "never_trained"
    with pytest.raises(FileNotFoundError, match="classifier.pth: classifier checkpoint not found"):
        generate_maps(opt)
    status = grad_cam_main(["--dataroot", str(cohort["dataroot"]), "--name", "never_trained",
                            "--checkpoints_dir", str(cohort["checkpoints"]), "--gpu_ids", "-1"])
    assert status == 1
    assert "classifier checkpoint not found" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "heatmap").exists()


def test_missing_crop_is_refused_before_any_map(cohort, tmp_path):
    out = tmp_path / "heatmap"
    good = split_key("syn002", 22)
    with pytest.raises(ValueError, match="crop file.* of listed vertebrae not found") as refused:
        generate_maps(cam_options(cohort, out, "--keys", "syn999_20", good, "--no_png"))
    assert str(crop_paths(cohort["dataroot"], "syn999_20").ct) in str(refused.value)
    assert not list(out.glob("*.nii.gz"))


def test_missing_ct_crop_fails_the_script(cohort, tmp_path, capsys):
    dataroot = tmp_path / "straightened"
    key = split_key("syn000", 21)
    for kind in ("label", "CT"):
        (dataroot / kind).mkdir(parents=True)
    paths = crop_paths(cohort["dataroot"], key)
    (dataroot / "label" / paths.label.name).write_bytes(paths.label.read_bytes())
    (dataroot / "label" / paths.sidecar.name).write_bytes(paths.sidecar.read_bytes())
    status = grad_cam_main(["--dataroot", str(dataroot), "--name", "syn", "--checkpoints_dir",
                            str(cohort["checkpoints"]), "--gpu_ids", "-1", "--no_png"])
    assert status == 1
    assert f"{dataroot / 'CT' / paths.ct.name}" in capsys.readouterr().err
    assert not (tmp_path / "heatmap" / f"{key}.nii.gz").exists()


def test_training_without_crops_is_a_clear_error(tmp_path):
    split_json = tmp_path / "split.json"
    split_json.write_text(json.dumps({"train": {"nocase_20": 0, "nocase_21": 2}, "val": {}}), encoding="utf-8")
    (tmp_path / "straightened" / "label").mkdir(parents=True)
    opt = classifier_options(tmp_path / "straightened", split_json, tmp_path / "ck", "none")
    with pytest.raises(ValueError, match="split.json: 4 crop file.* not found: .*nocase_20.nii.gz"):
        train_classifier(opt)


def test_with_a_vertebra_margin_voxels_far_from_the_vertebrae_do_not_change_the_map_or_probability():
    torch.manual_seed(0)
    model = build_classifier("small").eval()
    crop = synthetic_crop_object(np.random.default_rng(4), 21, {21})
    margin = SliceInput((-300.0, 800.0), view_mm=30.0, margin_mm=3.0)
    far = ~margin.keep_mask(crop.label_map, crop.spacing_mm)
    assert far.any() and (~far).any()
    changed = Crop(crop.key, crop.case, crop.label, crop.label_map,
                   np.where(far, np.random.default_rng(5).normal(500.0, 300.0, crop.ct_hu.shape), crop.ct_hu),
                   crop.affine, crop.sidecar)
    first, second = (cam_volume(model, c, margin, n_slices=6, batch_size=4, normalise="volume")
                     for c in (crop, changed))
    np.testing.assert_array_equal(first.volume, second.volume)
    assert first.vertebra_probability == second.vertebra_probability
    whole = SliceInput((-300.0, 800.0), view_mm=30.0)  # without the margin the same change does change the map
    assert not np.array_equal(cam_volume(model, crop, whole, n_slices=6, batch_size=4, normalise="volume").volume,
                              cam_volume(model, changed, whole, n_slices=6, batch_size=4, normalise="volume").volume)


def test_vertebra_window_maps_also_score_the_targets_own_window(cohort, tmp_path):
    """With one window per vertebra, localisation.json also holds the measure of each target's own window:
    the map the target-only run writes, up to the fracture-probability weight (same share, same peak)."""
    state = torch.load(checkpoint_path(cohort["checkpoints"], "syn"), weights_only=True)
    state["view_mm"] = 24.0
    viewed = tmp_path / "checkpoints"
    checkpoint_path(viewed, "syn").parent.mkdir(parents=True)
    torch.save(state, checkpoint_path(viewed, "syn"))
    keys = [split_key("syn002", 21), split_key("syn003", 21)]
    runs = {}
    for windows in ("vertebrae", "target"):
        opt = cam_options(cohort, tmp_path / windows, "--keys", *keys, "--no_png", "--normalise", "volume",
                          "--windows", windows)
        opt.checkpoints_dir = viewed
        runs[windows] = generate_maps(opt)
    assert runs["target"]["localisation_target_window"] is None
    document = json.loads((tmp_path / "vertebrae" / "localisation.json").read_text(encoding="utf-8"))
    target_only = json.loads((tmp_path / "target" / "localisation.json").read_text(encoding="utf-8"))
    assert "target_window" not in target_only
    for key in keys:
        own, alone = document["target_window"]["vertebrae"][key], target_only["vertebrae"][key]
        assert own["mass_share"] == pytest.approx(alone["mass_share"], rel=1e-5)
        assert own["peak_in_target"] == alone["peak_in_target"]
        crop_map = np.asarray(nib.load(tmp_path / "vertebrae" / f"{key}.nii.gz").dataobj)
        assert (crop_map[:20] > 0).any() or (crop_map[44:] > 0).any()  # the neighbours' windows are marked too
    assert runs["vertebrae"]["localisation_target_window"]["overall"]["n"] == len(keys)


def test_bad_map_and_classifier_options_fail_before_any_output(cohort, tmp_path):
    out = tmp_path / "heatmap"
    with pytest.raises(ValueError, match="--windows vertebrae needs a classifier trained with --view_mm"):
        generate_maps(cam_options(cohort, out, "--keys", split_key("syn000", 21), "--windows", "vertebrae"))
    assert not list(out.glob("*.nii.gz")) and not (out / "localisation.json").exists()
    with pytest.raises(SystemExit):
        classifier_options(cohort["dataroot"], cohort["split_json"], tmp_path, "bad", "--vertebra_margin_mm", "-1")
