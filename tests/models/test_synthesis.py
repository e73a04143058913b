"""Iterative two-stage synthesis: the per-plane algorithm (models/synthesis/plane.py) against a slice-by-slice
reference, and the whole-dataset run (models/synthesis/dataset.py, eval_3d_sagittal_twostage.py).

The batched implementation is checked against ``reference_synthesis`` below: a slice-by-slice loop
written from the reference implementation's ``run_model`` (masking, tall-target clamp, generator
call on one slice, height-adaptive composition with index arithmetic), independent of
``data.masking`` and ``models.composition``.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import eval_3d_sagittal_twostage as script
from data.crops import crop_affine, write_crop
from data.image_io import load_ct, load_mask, save_nifti, unwindow, window_hu
from data.labels import split_key, vertebra_name
from models.networks import GeneratorOutput, HealthiVertGenerator
from models.synthesis.checkpoints import load_generator
from models.synthesis.plane import adjacent_labels, synthesize_plane
from models.synthesis.runner import GeneratorRunner
from models.synthesis.settings import SynthesisSettings
from tests.synthetic_crops import BODY_COLS, CROP_SIZE, WIDE_WINDOW, body_rows, make_crop_arrays
from util.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from util.fileio import write_json

LABELS = [18, 19, 20, 21, 22]
TARGET = 20
CT_FILL = -1.0  # windowed canvas fill of coronal slices (training dataset)


class ToyGenerator(nn.Module):
    """Element-wise stand-in for the generator: exactly batch-invariant, with a band that copies
    the context 2M rows above it (so the result depends on what earlier steps synthesized there), a
    segmentation that crosses 0.5 inside the band and heights that vary with the slice offset."""

    def __init__(self, ct_value: float | None = None) -> None:
        super().__init__()
        self.ct_value = ct_value

    def forward(self, masked_ct, offset_plane, band_mask, cam, mask_height_px=None) -> GeneratorOutput:
        width = masked_ct.shape[3]
        cols = torch.arange(width, dtype=masked_ct.dtype).view(1, 1, 1, -1) / width
        context = torch.roll(masked_ct, shifts=2 * int(mask_height_px), dims=2)
        inside = band_mask * torch.tanh(0.3 + 0.5 * offset_plane - 0.2 * cam + 0.6 * context)
        fine_ct = inside + (1.0 - band_mask) * 0.9 * masked_ct
        if self.ct_value is not None:
            fine_ct = torch.full_like(masked_ct, self.ct_value)
        seg = band_mask * torch.sigmoid(12.0 * (0.3 - (cols - 0.5).abs() - 0.3 * offset_plane))
        height = float(mask_height_px) * (0.55 + 0.4 * torch.cos(7.0 * offset_plane[:, 0, 0, 0]))
        zeros = torch.zeros_like(masked_ct)
        return GeneratorOutput(fine_ct, seg, height, fine_ct, seg, height, torch.cat([zeros, zeros], dim=1))


class RecordingGenerator(nn.Module):
    """Records (masked_ct, band_mask) of every call; the n-th call paints ``ct_values[n]`` everywhere."""

    def __init__(self, ct_values: list[float]) -> None:
        super().__init__()
        self.ct_values = ct_values
        self.inputs: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, masked_ct, offset_plane, band_mask, cam, mask_height_px=None) -> GeneratorOutput:
        self.inputs.append((masked_ct[:, 0].numpy().copy(), band_mask[:, 0].numpy().copy()))
        return ToyGenerator(self.ct_values[len(self.inputs) - 1])(masked_ct, offset_plane, band_mask, cam,
                                                                  mask_height_px)


class BandSpyGenerator(nn.Module):
    """The n-th call paints ``ct_values[n]`` (windowed) everywhere, segments the whole band and predicts
    height 0 (so exactly the vertebra's rows are replaced, nothing moves); records the band rows of
    every slice it receives."""

    def __init__(self, ct_values: list[float]) -> None:
        super().__init__()
        self.ct_values = ct_values
        self.band_rows: list[list[np.ndarray]] = []

    def forward(self, masked_ct, offset_plane, band_mask, cam, mask_height_px=None) -> GeneratorOutput:
        self.band_rows.append([np.flatnonzero(band[:, 0]) for band in band_mask[:, 0].numpy()])
        fine_ct = torch.full_like(masked_ct, self.ct_values[len(self.band_rows) - 1])
        height = torch.zeros(len(masked_ct))
        zeros = torch.zeros_like(masked_ct)
        return GeneratorOutput(fine_ct, band_mask, height, fine_ct, band_mask, height, torch.cat([zeros, zeros], dim=1))


def tiny_generator(ngf: int = 8, mask_height_px: int = 16, seed: int = 0) -> HealthiVertGenerator:
    """Random-weight generator whose outputs stay away from the thresholds (seg > 0.5, ceil of h_hat)."""
    torch.manual_seed(seed)
    generator = HealthiVertGenerator(ngf, mask_height_px).eval()
    with torch.no_grad():
        generator.fine.seg_head[0].bias.add_(2.0)
        generator.fine.height_head.fc.bias.add_(1.5)
    return generator


# ----------------------------------------------------------------------------- slice-by-slice reference


def reference_masking(ct_w, labels, vert_id, cam, mask_height, min_component_px=50):
    """The reference's masking of one slice (canvas arrays); None when the vertebra is absent."""
    mask = labels == vert_id
    components, count = ndimage.label(mask, structure=np.ones((3, 3)))
    for index in range(1, count + 1):
        if np.sum(components == index) < min_component_px:
            mask[components == index] = False
    coords = np.argwhere(mask)
    if coords.size == 0:
        return None
    rows = labels.shape[0]
    x1, x2 = int(coords[:, 0].min()), int(coords[:, 0].max())
    if x2 - x1 > mask_height:
        x1 = int(np.clip(int(np.mean(coords[:, 0])) - mask_height // 2, 0, rows - 1 - mask_height))
        x2 = x1 + mask_height
    band_top = int(np.clip((x1 + x2) // 2 - mask_height // 2, 0, rows - mask_height))
    band_stop = band_top + mask_height

    def shifted(image, band_fill=0.0):
        out = np.full(image.shape, band_fill, dtype=np.float32)
        out[:band_top] = image[x1 - band_top:x1]
        out[band_stop:] = image[x2:x2 + rows - band_stop]
        return out

    band = np.zeros(labels.shape, dtype=np.float32)
    band[band_top:band_stop] = 1.0
    return shifted(ct_w, -1.0), band, shifted(cam), x1, x2, band_top + mask_height // 2


def reference_compose(original, generated, x1, x2, band_centre, h_hat, mask_height):
    """The reference's composition: H = max(ceil(h_hat), h) (at most the band), rows above x1 move up
    by (H - h) // 2, rows from x2 down move below the H generated rows (read centred on the band)."""
    rows = original.shape[0]
    height = x2 - x1
    generated_rows = max(min(max(math.ceil(h_hat), height), mask_height), 1)
    growth = generated_rows - height
    upper = x1 - growth // 2
    bottom = upper + generated_rows
    shift = band_centre - (x1 + x2) // 2
    out = np.empty_like(original)
    out[:upper] = original[growth // 2:x1]
    out[upper:bottom] = generated[upper + shift:bottom + shift]
    out[bottom:] = original[x2:x2 + rows - bottom]
    return out


def move_down(image, shift, fill):
    """One slice moved down by ``shift`` rows (up when negative), ``fill`` in the rows moved in."""
    rows = image.shape[0]
    out = np.full(image.shape, fill, dtype=np.float32)
    if shift >= 0:
        out[shift:] = image[:rows - shift]
    else:
        out[:rows + shift] = image[-shift:]
    return out


def move_back(moved, original, shift):
    """Undo ``move_down(original, shift, ...)`` on ``moved``; rows moved out of the frame come from ``original``."""
    rows = original.shape[0]
    out = np.array(original, dtype=np.float32)
    if shift >= 0:
        out[:rows - shift] = moved[shift:]
    else:
        out[-shift:] = moved[:rows + shift]
    return out


def reference_synthesis(generator, ct_hu, label_map, cam, target, plane, settings):
    """Slice-by-slice loop of the reference's eval_3d_sagittal_twostage (one generator call per slice),
    with this implementation's centring of the neighbours: a neighbour slice is moved down so that the
    neighbour's truncated mean row is row H // 2, synthesized, and moved back."""
    axis = 2 if plane == "sagittal" else 1
    move = lambda volume: np.moveaxis(volume, axis, 0)  # noqa: E731
    ct_out = np.array(ct_hu, dtype=np.float32)
    label_out = np.array(label_map, dtype=np.uint8)
    target_voxels = move(label_map) == target
    components, count = ndimage.label(target_voxels, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())
    target_voxels = np.isin(components, [i for i in range(1, count + 1) if sizes[i] >= settings.min_component_px])
    z_all = np.flatnonzero(target_voxels.any(axis=(1, 2)))
    z0, z1 = int(z_all[0]), int(z_all[-1])
    range_length = z1 - z0 + 1
    new_length = int(range_length * 4 / 5)
    new_z0 = z0 + (range_length - new_length) // 2
    new_z1 = new_z0 + new_length - 1
    centre = (new_z0 + new_z1) // 2
    upper, lower = adjacent_labels(np.unique(label_map), target)
    width = move(label_map).shape[2]
    canvas = max(label_map.shape[1], label_map.shape[2])
    left = (canvas - width) // 2
    cam_volume = np.zeros(label_map.shape, np.float32) if cam is None else cam
    processed = []

    def paste(image, fill):
        out = np.full((image.shape[0], canvas), fill, dtype=np.float32)
        out[:, left:left + width] = image
        return out

    def run_model(ct_slice, label_slice, cam_slice, vert_id, ratio, is_target):
        rows = np.nonzero(label_slice == vert_id)[0]
        shift = 0 if is_target or rows.size == 0 else label_slice.shape[0] // 2 - int(np.mean(rows))
        result = run_centred(move_down(ct_slice, shift, settings.hu_window[0]), move_down(label_slice, shift, 0.0),
                             move_down(cam_slice, shift, 0.0), vert_id, ratio)
        if result is None:
            return None
        new_ct, new_labels = result
        return (move_back(new_ct, ct_slice, shift),
                move_back(new_labels, label_slice, shift).astype(np.uint8))

    def run_centred(ct_slice, label_slice, cam_slice, vert_id, ratio):
        ct_w = paste(window_hu(ct_slice, settings.hu_window), CT_FILL)
        masked = reference_masking(ct_w, paste(label_slice, 0), vert_id, paste(cam_slice, 0.0),
                                   settings.mask_height_px, settings.min_component_px)
        if masked is None:
            return None
        masked_ct, band, cam_shifted, x1, x2, band_centre = masked
        tensor = lambda image: torch.from_numpy(image)[None, None]  # noqa: E731
        with torch.no_grad():
            out = generator(tensor(masked_ct), torch.full((1, 1) + masked_ct.shape, ratio), tensor(band),
                            tensor(cam_shifted), float(settings.mask_height_px))
        fake_ct = unwindow(out.fine_ct[0, 0].numpy()[:, left:left + width], settings.hu_window)
        fake_seg = out.fine_target_seg[0, 0].numpy()[:, left:left + width]
        h_hat = float(out.fine_height[0])
        new_ct = reference_compose(ct_slice, fake_ct, x1, x2, band_centre, h_hat, settings.mask_height_px)
        new_labels = reference_compose(label_slice.astype(np.float32), (fake_seg > 0.5) * np.float32(vert_id),
                                       x1, x2, band_centre, h_hat, settings.mask_height_px)
        return new_ct, new_labels

    for z in range(new_z0, new_z1 + 1):
        ratio = abs(z - centre) / range_length * 2
        ct_slice, label_slice = move(ct_out)[z].copy(), move(label_out)[z].copy()
        original_labels, cam_slice = label_slice.copy(), move(cam_volume)[z]
        for neighbour in (upper, lower):
            if neighbour is not None and np.sum(original_labels == neighbour) > settings.neighbour_min_px:
                result = run_model(ct_slice, label_slice, cam_slice, neighbour, ratio, False)
                if result is not None:
                    ct_slice, label_slice = result
        result = run_model(ct_slice, label_slice, cam_slice, target, ratio, True)
        if result is None:
            continue
        move(ct_out)[z], move(label_out)[z] = result
        processed.append(z)
    return ct_out, label_out, processed


# ----------------------------------------------------------------------------- crops


def crop_arrays(labels=LABELS, target=TARGET, missing_upper_slices=(), empty_target_slice=None):
    """Synthetic crop (CT float32 HU, labels uint8); optionally without the upper neighbour in some
    sagittal slices and without the target (and everything else) in one slice."""
    ct, label_map = make_crop_arrays(list(labels), target, stray_blob=True)
    ct = ct.astype(np.float32)
    upper = adjacent_labels(labels, target)[0]
    for z in missing_upper_slices:
        label_map[:, :, z][label_map[:, :, z] == upper] = 0
    if empty_target_slice is not None:
        ct[:, :, empty_target_slice] = -1000.0
        label_map[:, :, empty_target_slice] = 0
    cam = np.zeros(CROP_SIZE, dtype=np.float32)
    cam[20:44, BODY_COLS[0]:BODY_COLS[1], 4:12] = np.linspace(0.0, 1.0, 24, dtype=np.float32)[:, None, None]
    return ct, label_map, cam


CASES = {
    "all neighbours": dict(kwargs={}, mask_height=16),
    "upper missing in some slices": dict(kwargs={"missing_upper_slices": (5, 6, 7)}, mask_height=16),
    "taller than the band": dict(kwargs={}, mask_height=10),
    "first vertebra of the crop": dict(kwargs={"labels": [20, 21, 22]}, mask_height=16),
    "last vertebra of the crop": dict(kwargs={"labels": [18, 19, 20]}, mask_height=16),
    "empty slice": dict(kwargs={"empty_target_slice": 7}, mask_height=16),
}


@pytest.mark.parametrize("plane", ["sagittal", "coronal"])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_iteration_equals_slice_by_slice_reference(case: str, plane: str) -> None:
    ct, label_map, cam = crop_arrays(**CASES[case]["kwargs"])
    settings = SynthesisSettings(CASES[case]["mask_height"], WIDE_WINDOW,
                                 neighbour_min_px=200 if plane == "sagittal" else 60)
    generator = ToyGenerator()
    result = synthesize_plane(GeneratorRunner(generator, batch_size=0), ct, label_map, cam, TARGET, plane, settings)
    expected_ct, expected_labels, processed = reference_synthesis(generator, ct, label_map, cam, TARGET, plane,
                                                                  settings)
    assert result.processed_slices == processed
    np.testing.assert_array_equal(result.label_map, expected_labels)
    np.testing.assert_array_equal(result.ct_hu, expected_ct)
    assert not np.array_equal(result.label_map, label_map)


def test_real_generator_batched_in_chunks_matches_reference() -> None:
    ct, label_map, cam = crop_arrays(missing_upper_slices=(4, 5))
    settings = SynthesisSettings(16, WIDE_WINDOW)
    generator = tiny_generator()
    runner = GeneratorRunner(generator, batch_size=4)
    result = synthesize_plane(runner, ct, label_map, cam, TARGET, "sagittal", settings)
    expected_ct, expected_labels, processed = reference_synthesis(generator, ct, label_map, cam, TARGET, "sagittal",
                                                                  settings)
    assert result.processed_slices == processed
    np.testing.assert_array_equal(result.label_map, expected_labels)
    np.testing.assert_allclose(result.ct_hu, expected_ct, atol=0.05)
    upper_slices, lower_slices, target_slices = (len(step.slices) for step in result.steps)
    assert runner.calls == sum(math.ceil(n / 4) for n in (upper_slices, lower_slices, target_slices))
    assert (result.ct_hu != ct).any()


def test_steps_run_upper_then_lower_then_target_on_the_synthesized_neighbours() -> None:
    ct, label_map, _ = crop_arrays()
    upper_value, lower_value = 0.6123, 0.7311  # windowed sentinels (non-integer HU, unlike the crop)
    generator = RecordingGenerator([upper_value, lower_value, 0.0])
    settings = SynthesisSettings(16, WIDE_WINDOW)
    result = synthesize_plane(GeneratorRunner(generator, batch_size=0), ct, label_map, None, TARGET, "sagittal",
                              settings)
    assert [(step.role, step.label) for step in result.steps] == [("upper", 19), ("lower", 21), ("target", 20)]
    assert len(generator.inputs) == 3
    (upper_in, _), (lower_in, _), (target_in, target_band) = generator.inputs

    def holds(images, value):
        return np.isclose(images, value, atol=1e-5).any(axis=(1, 2))

    assert not holds(upper_in, upper_value).any()
    assert holds(lower_in, upper_value).all() and not holds(lower_in, lower_value).any()
    assert holds(target_in, upper_value).all() and holds(target_in, lower_value).all()
    # the upper neighbour's synthesized rows lie above the target's band, the lower one's below it
    for image, band in zip(target_in, target_band):
        band_rows = np.flatnonzero(band[:, 0])
        assert np.flatnonzero(np.isclose(image, upper_value, atol=1e-5).any(axis=1)).max() < band_rows[0]
        assert np.flatnonzero(np.isclose(image, lower_value, atol=1e-5).any(axis=1)).min() > band_rows[-1]


def test_neighbours_are_presented_centred_and_composed_back_in_place() -> None:
    labels = [19, 20, 21]
    ct, label_map, _ = crop_arrays(labels=labels)
    values = {19: 0.6123, 21: 0.7311, 20: 0.1}  # windowed sentinels per step (upper, lower, target)
    generator = BandSpyGenerator([values[19], values[21], values[20]])
    settings = SynthesisSettings(16, WIDE_WINDOW)
    result = synthesize_plane(GeneratorRunner(generator, batch_size=0), ct, label_map, None, TARGET, "sagittal",
                              settings)
    assert [step.label for step in result.steps] == [19, 21, 20]
    centre = CROP_SIZE[0] // 2
    for step, bands in zip(result.steps[:2], generator.band_rows[:2]):
        assert len(step.slices) == len(bands) > 0
        for z, band in zip(step.slices, bands):
            first, last = body_rows(labels, TARGET, z)[step.label]
            assert abs((first + last) // 2 - centre) > 10  # off-centre in the crop
            assert band[0] + settings.mask_height_px // 2 == centre  # band centred as in training
    # each vertebra is back on its own rows: the composition replaces rows x1 .. x2 - 1 (row x2 keeps
    # the original, as in the reference), every other row is unchanged
    for z in result.processed_slices:
        vertebra_rows = np.zeros(CROP_SIZE[0], dtype=bool)
        for label, (first, last) in body_rows(labels, TARGET, z).items():
            body = result.label_map[:, BODY_COLS[0]:BODY_COLS[1], z]  # (the crop's stray blob lies outside)
            np.testing.assert_array_equal(np.flatnonzero((body == label).any(axis=1)),
                                          np.arange(first, last + 1))
            np.testing.assert_allclose(result.ct_hu[first:last, :, z], unwindow(values[label], WIDE_WINDOW),
                                       rtol=0, atol=1e-2)
            vertebra_rows[first:last] = True
        np.testing.assert_array_equal(result.ct_hu[~vertebra_rows, :, z], ct[~vertebra_rows, :, z])
        np.testing.assert_array_equal(result.label_map[~vertebra_rows, :, z], label_map[~vertebra_rows, :, z])


def test_missing_neighbours_and_empty_slice_keep_the_original() -> None:
    settings = SynthesisSettings(16, WIDE_WINDOW)
    ct, label_map, _ = crop_arrays(labels=[20, 21, 22], empty_target_slice=7)
    result = synthesize_plane(GeneratorRunner(ToyGenerator()), ct, label_map, None, TARGET, "sagittal", settings)
    assert [step.role for step in result.steps] == ["lower", "target"]
    assert 7 not in result.processed_slices
    np.testing.assert_array_equal(result.ct_hu[:, :, 7], ct[:, :, 7])
    np.testing.assert_array_equal(result.label_map[:, :, 7], label_map[:, :, 7])
    outside = [z for z in range(CROP_SIZE[2]) if z not in result.processed_slices]
    np.testing.assert_array_equal(result.label_map[:, :, outside], label_map[:, :, outside])


def test_target_taller_than_band_is_clamped_as_the_reference() -> None:
    ct, label_map, _ = crop_arrays()
    mask_height = 8
    settings = SynthesisSettings(mask_height, WIDE_WINDOW)
    result = synthesize_plane(GeneratorRunner(ToyGenerator()), ct, label_map, None, TARGET, "sagittal", settings)
    z = 8
    first, last = body_rows(LABELS, TARGET, z)[TARGET]
    assert last - first > mask_height and z in result.processed_slices
    # every vertebra is taller than the band: the M rows from int(mean row) - M // 2 are replaced, the
    # rest of the vertebra stays where it was (no shift), so its first and last rows are unchanged
    window_top = (first + last) // 2 - mask_height // 2
    kept = np.r_[first:window_top, window_top + mask_height + 1:last + 1]
    np.testing.assert_array_equal(result.ct_hu[kept, :, z], ct[kept, :, z])
    np.testing.assert_array_equal(result.label_map[kept, :, z], label_map[kept, :, z])
    assert (result.ct_hu[window_top:window_top + mask_height, :, z]
            != ct[window_top:window_top + mask_height, :, z]).all()


def test_adjacent_labels_follow_anatomical_order() -> None:
    assert adjacent_labels([18, 19, 20, 21], 20) == (19, 21)
    assert adjacent_labels([19, 28, 20], 20) == (28, None)
    assert adjacent_labels([19, 28, 20], 19) == (None, 28)
    assert adjacent_labels([19, 20], 20) == (19, None)
    assert adjacent_labels([24, 25], 24) == (None, 25)
    assert adjacent_labels([18, 20], 20) == (None, None)  # T12 missing: T11 is not adjacent
    assert adjacent_labels([0, 20, 21], 21) == (20, None)


# ----------------------------------------------------------------------------- files and command line


def write_checkpoint(path: Path, generator: nn.Module, plane: str, mask_height_mm: float = 16.0) -> None:
    options = {"ngf": 8, "mask_height": mask_height_mm, "hu_window": list(WIDE_WINDOW), "min_component_px": 50,
               "plane": plane}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "model": {"nets": {"G": generator.state_dict()}}, "options": options}, path)


@pytest.fixture()
def cohort(tmp_path: Path) -> dict:
    """Three 64x64x16 crops of one case (1 mm voxels), attention maps for two, a split and checkpoints."""
    dataroot, cam_dir = tmp_path / "straightened", tmp_path / "heatmap"
    affine = crop_affine((1.0, 1.0, 1.0), np.array([10.0, -20.0, 30.0]), CROP_SIZE)
    keys = []
    for target in (19, 20, 21):
        ct, label_map, cam = crop_arrays(target=target)
        key = split_key("syn001", target)
        write_crop(dataroot, key, ct, label_map, affine,
                   {"case": "syn001", "label": target, "name": vertebra_name(target), "crop_size": list(CROP_SIZE),
                    "spacing_mm": [1.0, 1.0, 1.0], "axes": "IPL", "has_ct": True})
        if target != 21:
            save_nifti(cam, affine, cam_dir / f"{key}.nii.gz")
        keys.append(key)
    write_json(tmp_path / "vertebra_data.json", {"train": {keys[0]: 0}, "val": {keys[1]: 0}, "test": {keys[2]: 2}})
    checkpoints = tmp_path / "checkpoints"
    write_checkpoint(checkpoints / "sag" / "latest.pth", tiny_generator(seed=1), "sagittal")
    write_checkpoint(checkpoints / "cor" / "latest.pth", tiny_generator(seed=2), "coronal")
    return {"root": tmp_path, "dataroot": dataroot, "cam_dir": cam_dir, "keys": keys, "affine": affine,
            "checkpoints": checkpoints, "results": tmp_path / "results"}


def command(cohort: dict, *extra: str) -> list[str]:
    return ["--dataroot", str(cohort["dataroot"]), "--cam_dir", str(cohort["cam_dir"]), "--name", "sag",
            "--results_dir", str(cohort["results"]), "--checkpoints_dir", str(cohort["checkpoints"]),
            "--gpu_ids", "-1", "--no_progress", *extra]


def test_script_writes_outputs_on_the_crop_grid_and_resumes(cohort: dict, capsys) -> None:
    with pytest.warns(UserWarning, match="no attention map for 1 vertebra"):
        assert script.main(command(cohort, "--split", "val,test")) == 0
    out = cohort["results"] / "sag"
    for key in cohort["keys"][1:]:
        ct = load_ct(out / "CT_fake" / f"{key}.nii.gz")
        labels = load_mask(out / "label_fake" / f"{key}.nii.gz")
        original = load_mask(cohort["dataroot"] / "label" / f"{key}.nii.gz")
        assert ct.array.shape == labels.array.shape == CROP_SIZE
        np.testing.assert_allclose(ct.affine, cohort["affine"], atol=1e-5)
        np.testing.assert_allclose(labels.affine, cohort["affine"], atol=1e-5)
        assert set(np.unique(labels.array)) <= set(np.unique(original.array))
        assert -1000 <= ct.array.min() and ct.array.max() <= 3000
    assert not (out / "CT_fake" / f"{cohort['keys'][0]}.nii.gz").exists()  # train split not asked for
    report = capsys.readouterr().out
    assert "2 succeeded" in report and "0 failed" in report
    before = (out / "CT_fake" / f"{cohort['keys'][1]}.nii.gz").stat().st_mtime_ns
    assert script.main(command(cohort, "--split", "val,test")) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert (out / "CT_fake" / f"{cohort['keys'][1]}.nii.gz").stat().st_mtime_ns == before
    assert script.main(command(cohort, "--split", "val", "--overwrite")) == 0
    assert "1 succeeded" in capsys.readouterr().out


def test_plane_both_writes_coronal_and_fused_volumes(cohort: dict) -> None:
    assert script.main(command(cohort, "--plane", "both", "--name_coronal", "cor", "--split", "val")) == 0
    key = cohort["keys"][1]
    root = cohort["results"] / "sag"
    volumes = {part: (load_ct(root / part / "CT_fake" / f"{key}.nii.gz").array,
                      load_mask(root / part / "label_fake" / f"{key}.nii.gz").array)
               for part in ("", "coronal", "fused")}
    for ct, labels in volumes.values():
        assert ct.shape == labels.shape == CROP_SIZE
    mean = (volumes[""][0].astype(np.float32) + volumes["coronal"][0]) / 2
    assert np.abs(volumes["fused"][0] - mean).max() <= 1.0  # int16 rounding of each file
    assert (volumes["fused"][1] == TARGET).any()


def test_coronal_plane_alone(cohort: dict) -> None:
    args = command(cohort, "--plane", "coronal", "--split", "val")
    args[args.index("sag")] = "cor"
    assert script.main(args) == 0
    key = cohort["keys"][1]
    assert load_mask(cohort["results"] / "cor" / "label_fake" / f"{key}.nii.gz").array.shape == CROP_SIZE


def test_missing_checkpoint_is_a_clear_error(cohort: dict, capsys) -> None:
    assert script.main(command(cohort, "--epoch", "7")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "7.pth: checkpoint not found" in err
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_generator(cohort["checkpoints"] / "nothing" / "latest.pth")


def test_plane_mismatch_and_missing_coronal_name_are_errors(cohort: dict, capsys) -> None:
    assert script.main(command(cohort, "--plane", "coronal")) == 2
    assert "trained on sagittal slices" in capsys.readouterr().err
    assert script.main(command(cohort, "--plane", "both")) == 2
    assert "--name_coronal" in capsys.readouterr().err


def test_bad_vertebra_is_reported_and_the_run_continues(cohort: dict, capsys) -> None:
    bad = cohort["keys"][2]
    (cohort["dataroot"] / "CT" / f"{bad}.nii.gz").write_bytes(b"not a NIfTI file")
    assert script.main(command(cohort)) == 1
    report = capsys.readouterr().out
    assert f"FAILED {bad}" in report and "2 succeeded" in report
    out = cohort["results"] / "sag"
    assert not (out / "CT_fake" / f"{bad}.nii.gz").exists()
    assert (out / "label_fake" / f"{cohort['keys'][0]}.nii.gz").exists()
    summary = (out / "synthesis_summary.json").read_text(encoding="utf-8")
    assert bad in summary


def test_ranks_share_the_vertebrae(cohort: dict, monkeypatch) -> None:
    from models.synthesis.dataset import synthesize_dataset

    done = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.warns(UserWarning, match="no attention map") if rank == 0 else contextlib.nullcontext():
            summary = synthesize_dataset(script.parse_options(command(cohort)), show_progress=False)
        done.append(summary.succeeded)
    assert sorted(done[0] + done[1]) == sorted(cohort["keys"])
    assert not set(done[0]) & set(done[1])


@pytest.mark.slow
def test_torchrun_two_ranks_share_and_report_all_vertebrae(cohort: dict, repo_root: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(repo_root / "eval_3d_sagittal_twostage.py"), *command(cohort)],
        cwd=repo_root, env=env, capture_output=True, encoding="utf-8", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 succeeded" in result.stdout
    for key in cohort["keys"]:
        assert (cohort["results"] / "sag" / "label_fake" / f"{key}.nii.gz").is_file()
