"""RHLV quantification (docs/design.md, 'RHLV') on label pairs with a known height loss, and on real straightened
labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.crops import crop_affine
from data.image_io import load_mask, save_nifti
from evaluation import RHLV_quantification
from evaluation.rhlv import RHLV_COLUMNS, RHLVError, rhlv_for_vertebra, rhlv_neighbours_for_vertebra
from tests.synthetic_crops import compress_vertebra
from util.fileio import write_json

SHAPE = (128, 96, 48)  # (S->I, A->P, R->L)
AP_FIRST, DEPTH = 30, 36  # body columns along A->P
LR_FIRST, WIDTH = 8, 32  # body slices along R->L
TARGET, TOP, HEIGHT = 20, 45, 36
RIM_FRACTION = 0.5  # the outermost ring of columns is this much shorter (rounded endplate rim)

LossFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u_ap, u_lr) in [0, 1] -> loss fraction


def no_loss(u_ap: np.ndarray, u_lr: np.ndarray) -> np.ndarray:
    return np.zeros(np.broadcast(u_ap, u_lr).shape)


def wedge(ratio: float, side: str = "anterior") -> LossFunction:
    """Linear loss from ``ratio`` at one wall to 0 at the opposite wall (anterior, posterior or right)."""
    def loss(u_ap: np.ndarray, u_lr: np.ndarray) -> np.ndarray:
        u = {"anterior": 1 - u_ap, "posterior": u_ap, "right": 1 - u_lr}[side]
        return np.broadcast_to(ratio * u, np.broadcast(u_ap, u_lr).shape)
    return loss


def biconcave(ratio: float) -> LossFunction:
    """Central depression: ``ratio`` at mid-depth, 0 at the anterior and posterior walls."""
    return lambda u_ap, u_lr: np.broadcast_to(ratio * (1 - (2 * u_ap - 1) ** 2), np.broadcast(u_ap, u_lr).shape)


def crush(ratio: float) -> LossFunction:
    return lambda u_ap, u_lr: np.full(np.broadcast(u_ap, u_lr).shape, ratio)


def column_positions() -> tuple[np.ndarray, np.ndarray]:
    """Normalised column centres (A->P as (DEPTH, 1), R->L as (1, WIDTH)) of the body."""
    u_ap = ((np.arange(DEPTH) + 0.5) / DEPTH)[:, None]
    u_lr = ((np.arange(WIDTH) + 0.5) / WIDTH)[None, :]
    return u_ap, u_lr


def add_body(label_map: np.ndarray, label: int, top: int, height: int, loss: LossFunction = no_loss,
             collapse: str = "top") -> np.ndarray:
    """Draw a box-shaped body whose column heights are ``height * (1 - loss)``; the rim ring is shorter.

    ``collapse``: "top" removes rows from the superior endplate (wedge, crush), "both" from both
    endplates (biconcave).
    """
    u_ap, u_lr = column_positions()
    heights = height * (1.0 - loss(u_ap, u_lr))
    rim = np.zeros((DEPTH, WIDTH), dtype=bool)
    rim[[0, -1], :] = rim[:, [0, -1]] = True
    heights = np.rint(np.where(rim, heights * RIM_FRACTION, heights)).astype(int)
    start = top + (height - heights if collapse == "top" else (height - heights) // 2)
    rows = np.arange(label_map.shape[0])[:, None, None]
    body = (rows >= start[None]) & (rows < (start + heights)[None])
    view = label_map[:, AP_FIRST: AP_FIRST + DEPTH, LR_FIRST: LR_FIRST + WIDTH]
    view[body] = label
    return label_map


def crop(loss: LossFunction = no_loss, collapse: str = "top", neighbours: bool = True,
         neighbour_loss: LossFunction = no_loss) -> np.ndarray:
    """A crop with the target (label 20) and, optionally, healthy neighbours 19 (above) and 21 (below)."""
    label_map = np.zeros(SHAPE, dtype=np.uint8)
    add_body(label_map, TARGET, TOP, HEIGHT, loss, collapse)
    if neighbours:
        add_body(label_map, TARGET - 1, 8, 34, neighbour_loss)
        add_body(label_map, TARGET + 1, 86, 38)
    return label_map


def true_regional_loss(loss: LossFunction, plane: str = "sagittal") -> dict[str, float]:
    """Mean loss over the measured (non-rim) columns of each third of the body, from the loss function."""
    u_ap, u_lr = column_positions()
    values = np.broadcast_to(loss(u_ap, u_lr), (DEPTH, WIDTH))
    if plane == "sagittal":
        profile, n = values[1:-1, WIDTH // 2], DEPTH  # along A->P in a central sagittal slice
    else:
        profile, n = values[DEPTH // 2, 1:-1], WIDTH  # along R->L in a central coronal slice
    index = np.arange(1, n - 1)
    third = np.floor(3 * (index + 0.5) / n).astype(int)
    truth = {region: float(profile[third == k].mean()) for k, region in enumerate(("pre", "mid", "post"))}
    truth["all"] = float(profile.mean())
    return truth


@pytest.mark.parametrize("loss, collapse", [
    (wedge(0.3), "top"), (wedge(0.6), "top"), (biconcave(0.35), "both"), (crush(0.25), "top"),
], ids=["wedge30", "wedge60", "biconcave35", "crush25"])
def test_rhlv_recovers_true_regional_loss(loss: LossFunction, collapse: str) -> None:
    result = rhlv_for_vertebra(crop(loss, collapse), crop(), TARGET, spacing_mm=1.0)
    truth = true_regional_loss(loss)
    for region, expected in truth.items():
        assert result.rhlv[region] == pytest.approx(expected, abs=0.02), region
    assert result.max_regional_rhlv == pytest.approx(max(truth[r] for r in ("pre", "mid", "post")), abs=0.02)
    assert result.height_syn_mm["all"] == pytest.approx(HEIGHT, abs=0.01)


def test_identical_labels_give_zero_rhlv() -> None:
    label_map = crop(wedge(0.3))
    result = rhlv_for_vertebra(label_map, label_map.copy(), TARGET)
    assert all(value == 0.0 for value in result.rhlv.values())
    assert result.height_syn_mm == result.height_ori_mm


def test_swapping_anterior_and_posterior_moves_the_loss() -> None:
    anterior = rhlv_for_vertebra(crop(wedge(0.4, "anterior")), crop(), TARGET).rhlv
    posterior = rhlv_for_vertebra(crop(wedge(0.4, "posterior")), crop(), TARGET).rhlv
    assert anterior["pre"] > anterior["mid"] > anterior["post"]
    assert posterior["post"] > posterior["mid"] > posterior["pre"]
    assert posterior["post"] == pytest.approx(anterior["pre"], abs=0.01)
    assert posterior["pre"] == pytest.approx(anterior["post"], abs=0.01)


def test_heights_in_mm_follow_axis0_spacing_only() -> None:
    original, synthesized = crop(crush(0.25)), crop()
    reference = rhlv_for_vertebra(original, synthesized, TARGET, spacing_mm=1.0)
    anisotropic = rhlv_for_vertebra(original, synthesized, TARGET, spacing_mm=(0.8, 0.5, 2.0))
    assert anisotropic.rhlv == reference.rhlv
    assert anisotropic.height_syn_mm["all"] == pytest.approx(0.8 * HEIGHT)
    assert anisotropic.height_ori_mm["pre"] == pytest.approx(0.8 * reference.height_ori_mm["pre"])


def test_coronal_plane_splits_right_middle_left() -> None:
    loss = wedge(0.4, "right")
    coronal = rhlv_for_vertebra(crop(loss), crop(), TARGET, plane="coronal")
    truth = true_regional_loss(loss, "coronal")
    for region, expected in truth.items():
        assert coronal.rhlv[region] == pytest.approx(expected, abs=0.02), region
    sagittal = rhlv_for_vertebra(crop(loss), crop(), TARGET, plane="sagittal").rhlv
    assert max(sagittal.values()) - min(sagittal.values()) < 0.02  # uniform along A->P


def test_missing_or_empty_synthesized_target_is_a_clear_error() -> None:
    empty = crop()
    empty[empty == TARGET] = 0
    with pytest.raises(RHLVError, match="synthesized label map has no voxels of label 20"):
        rhlv_for_vertebra(crop(), empty, TARGET)
    with pytest.raises(RHLVError, match="original label map has no voxels of label 20"):
        rhlv_for_vertebra(empty, crop(), TARGET)


def test_neighbour_baseline_interpolates_healthy_neighbours() -> None:
    result = rhlv_neighbours_for_vertebra(crop(crush(0.3)), TARGET, spacing_mm=1.0)
    assert result.reference_labels == (TARGET - 1, TARGET + 1)
    assert result.height_syn_mm["all"] == pytest.approx(HEIGHT, abs=0.5)  # (34 + 38) / 2
    for region in ("all", "pre", "mid", "post"):
        assert result.rhlv[region] == pytest.approx(0.3, abs=0.03), region


def test_neighbour_baseline_skips_fractured_neighbours() -> None:
    label_map = crop(crush(0.3), neighbour_loss=wedge(0.5))
    result = rhlv_neighbours_for_vertebra(label_map, TARGET)
    assert result.reference_labels == (TARGET + 1,)
    assert result.height_syn_mm["all"] == pytest.approx(38, abs=0.5)
    lonely = crop(crush(0.3), neighbours=False)
    with pytest.raises(RHLVError, match="no complete, healthy-looking neighbour"):
        rhlv_neighbours_for_vertebra(lonely, TARGET)


def _write_cohort(root: Path) -> tuple[Path, Path, Path]:
    """label/ and label_fake/ crops for case 'ph000' (L1 wedge, L2 fake missing, L3 fake empty) + split."""
    affine = crop_affine((1.0, 1.0, 1.0), np.zeros(3), SHAPE)
    label_dir, fake_dir = root / "label", root / "label_fake"
    for label in (20, 21, 22):
        original = np.zeros(SHAPE, dtype=np.uint8)
        add_body(original, label - 1, 8, 34)
        add_body(original, label, TOP, HEIGHT, wedge(0.3) if label == 20 else no_loss)
        add_body(original, label + 1, 86, 38)
        save_nifti(original, affine, label_dir / f"ph000_{label}.nii.gz")
        synthesized = original.copy()
        add_body(synthesized, label, TOP, HEIGHT)
        if label == 22:
            synthesized[synthesized == label] = 0
        if label != 21:
            save_nifti(synthesized, affine, fake_dir / f"ph000_{label}.nii.gz")
    split = root / "split.json"
    write_json(split, {"train": {"ph000_20": 2, "ph000_21": 0}, "val": {"ph000_22": 0}, "test": {}})
    return label_dir, fake_dir, split


def test_cli_writes_tables_maps_and_reports_failed_vertebrae(tmp_path: Path, capsys) -> None:
    label_dir, fake_dir, split = _write_cohort(tmp_path)
    out = tmp_path / "results" / "rhlv.csv"
    status = RHLV_quantification.main([
        "--label_dir", str(label_dir), "--fake_dir", str(fake_dir), "--split_json", str(split), "--out", str(out),
        "--reference", "both", "--maps", str(tmp_path / "maps"), "--xlsx", "--workers", "1"])
    assert status == 1  # two vertebrae failed against the synthesized reference
    errors = capsys.readouterr().err
    assert "ph000_21 (synthesized)" in errors and "not found" in errors
    assert "ph000_22 (synthesized)" in errors and "no voxels of label 22" in errors

    table = pd.read_csv(out)
    assert list(table.columns) == RHLV_COLUMNS
    assert table["Vertebra"].tolist() == ["ph000_20"]
    assert table.loc[0, "Label"] == 2 and table.loc[0, "Dataset"] == "train"
    assert table.loc[0, "Pre RHLV"] == pytest.approx(true_regional_loss(wedge(0.3))["pre"], abs=0.02)
    pd.testing.assert_frame_equal(pd.read_excel(tmp_path / "results" / "rhlv.xlsx"), table, check_dtype=False)

    baseline = pd.read_csv(tmp_path / "results" / "rhlv_neighbours.csv")
    assert list(baseline.columns) == RHLV_COLUMNS
    assert baseline["Vertebra"].tolist() == ["ph000_20", "ph000_21", "ph000_22"]
    assert (tmp_path / "maps" / "ph000_20.png").stat().st_size > 0
    assert (tmp_path / "maps" / "ph000_21_neighbours.png").is_file()
    assert not (tmp_path / "maps" / "ph000_21.png").exists()


def test_cli_neighbours_only_needs_no_fake_dir(tmp_path: Path) -> None:
    label_dir, _, _ = _write_cohort(tmp_path)
    out = tmp_path / "baseline.csv"
    status = RHLV_quantification.main(["--label_dir", str(label_dir), "--out", str(out),
                                       "--reference", "neighbours", "--plane", "coronal", "--workers", "1"])
    assert status == 0
    table = pd.read_csv(out)
    assert len(table) == 3 and table["Dataset"].isna().all()


@pytest.mark.parametrize("label, factor, plane", [(20, 0.75, "sagittal"), (22, 0.6, "sagittal"),
                                                  (21, 0.8, "coronal")])
def test_real_label_compression_is_recovered(real_data_dir: Path, label: int, factor: float, plane: str) -> None:
    path = real_data_dir / "upstream-0007" / "straightened" / "label" / f"0007_{label}.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    volume = load_mask(path)
    compressed = compress_vertebra(volume.array, label, factor)
    result = rhlv_for_vertebra(compressed, volume.array, label, volume.spacing_mm, plane=plane)
    for region, value in result.rhlv.items():
        assert value == pytest.approx(1 - factor, abs=0.03), region
    assert rhlv_for_vertebra(volume.array, volume.array, label, volume.spacing_mm, plane=plane).rhlv["all"] == 0


def test_measure_settings_from_the_flags_have_the_documented_defaults() -> None:
    """docs/design.md, 'RHLV': tau 0.7, +/- extent // 5 slices, islands under 5 % dropped (none under reference)."""
    from evaluation.rhlv import MeasureOptions

    parse = RHLV_quantification.build_parser().parse_args
    assert MeasureOptions.from_options(parse([])) == MeasureOptions("sagittal", 0.7, 5, 0.05, 0.7, "healthivert")
    reference = MeasureOptions.from_options(parse(["--protocol", "reference"]))
    assert reference.min_component_fraction == 0.0 and reference.height_threshold == 0.7
    given = MeasureOptions.from_options(parse(["--protocol", "reference", "--min_component_fraction", "0.1",
                                               "--plane", "coronal", "--length_divisor", "4"]))
    assert (given.min_component_fraction, given.plane, given.length_divisor) == (0.1, "coronal", 4)
