"""3D SupCon-SENet grader: SupCon loss against a loop reference, networks, sampling, the fold protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from Attention import train_grader3d
from Attention.grader3d import (
    SupConGrader,
    augment,
    central_roi,
    class_balanced_weights,
    load_grader,
    load_grader_samples,
    supervised_contrastive_loss,
)
from data.crops import read_split
from evaluation.grading import score_prediction_table, score_predictions
from tests.synthetic_crops import WIDE_WINDOW, write_synthetic_cohort
from util.fileio import read_json, write_json


def supcon_reference(z: torch.Tensor, labels: list[int], temperature: float) -> float:
    """Khosla et al. eq. 2, written out with Python loops over anchors, positives and the denominator."""
    losses = []
    for i in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(len(labels)) if a != i)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / temperature) / denominator)
                           for p in positives) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_matches_loop_reference(temperature: float) -> None:
    torch.manual_seed(0)
    z = F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    labels = [0, 1, 0, 2, 1, 0, 3]  # grade 2 and 3 have no positive: they are no anchors
    loss = supervised_contrastive_loss(z, torch.tensor(labels), temperature)
    assert float(loss) == pytest.approx(supcon_reference(z, labels, temperature), rel=1e-10)


def test_supcon_is_low_for_clustered_classes_and_has_gradients() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert supervised_contrastive_loss(clustered, labels, 0.1) < supervised_contrastive_loss(mixed, labels, 0.1)
    z = F.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    supervised_contrastive_loss(z, labels).backward()
    assert z.grad.abs().sum() > 0
    assert float(supervised_contrastive_loss(z.detach(), torch.tensor([0, 1, 2, 3]))) == 0.0  # no positives at all


@pytest.mark.parametrize("arch,shape", [("small", (2, 1, 32, 32, 16)), ("seresnet50", (1, 1, 32, 32, 32))])
def test_grader_outputs(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = SupConGrader(arch, projection_dim=16, base_width=8).eval()
    logits, projections = model(torch.randn(*shape))
    assert logits.shape == (shape[0], 4) and projections.shape == (shape[0], 16)
    assert torch.allclose(projections.norm(dim=1), torch.ones(shape[0]), atol=1e-5)
    if arch == "seresnet50":
        assert model.backbone.out_features == 2048


def test_class_balanced_weights_give_each_grade_equal_mass() -> None:
    grades = [0, 0, 0, 0, 1, 2, 2, 3]
    weights = class_balanced_weights(grades).numpy()
    mass = {g: weights[np.array(grades) == g].sum() for g in set(grades)}
    assert all(value == pytest.approx(1.0) for value in mass.values())


def test_augment_flips_and_shifts_only() -> None:
    volumes = torch.arange(2 * 6 * 4 * 3, dtype=torch.float32).view(2, 1, 6, 4, 3)
    views = augment(volumes, 0, torch.Generator().manual_seed(1))
    for view, volume in zip(views, volumes):
        assert torch.equal(view, volume) or torch.equal(view, volume.flip(1))
    shifted = augment(volumes, 2, torch.Generator().manual_seed(2))
    assert shifted.shape == volumes.shape
    assert central_roi(np.zeros((10, 8, 6)), (4, 0, 99)).shape == (4, 8, 6)


@pytest.fixture(scope="module")
def graded_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The synthetic crops with grades by level (L1 and above 0, L2 1, L3 2, L4 3) and case 3 as val."""
    root = tmp_path_factory.mktemp("grader_cohort")
    dataroot, split_path = write_synthetic_cohort(root)
    grade_of = {18: 0, 19: 0, 20: 0, 21: 1, 22: 2, 23: 3}
    split = {name: {key: grade_of[int(key.split("_")[1])] for key in entries}
             for name, entries in read_split(split_path).items()}
    graded = root / "graded.json"
    write_json(graded, split)
    return dataroot, graded


def test_fold_protocol_writes_scored_predictions(graded_cohort: tuple[Path, Path], tmp_path: Path) -> None:
    dataroot, split = graded_cohort
    argv = ["--dataroot", str(dataroot), "--split_json", str(split), "--name", "g3d", "--arch", "small",
            "--base_width", "8", "--projection_dim", "8", "--n_epochs", "1", "--n_epochs_decay", "0",
            "--batch_size", "4", "--n_splits", "2", "--gpu_ids", "-1", "--seed", "1",
            "--hu_window", *map(str, WIDE_WINDOW), "--checkpoints_dir", str(tmp_path / "ck"),
            "--results_dir", str(tmp_path / "res")]
    assert train_grader3d.main(argv) == 0
    table = pd.read_csv(tmp_path / "res" / "g3d" / "predictions.csv")
    val_keys = sorted(read_split(split)["val"])
    assert sorted(table["Fold"].unique()) == [1, 2]
    for fold in (1, 2):
        rows = table[table["Fold"] == fold]
        assert sorted(rows["Vertebra"]) == val_keys and set(rows["Dataset"]) == {"val"}
    probabilities = table[["P0", "P1", "P2", "P3"]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (table["Predicted"].to_numpy() == probabilities.argmax(axis=1)).all()
    report = read_json(tmp_path / "res" / "g3d" / "grading" / "grading.json")
    for fold in report["folds"]:  # the grading scorer, fold by fold
        rows = table[table["Fold"] == fold["fold"]]
        expected = score_predictions(rows["Label"].to_numpy(), rows["Predicted"].to_numpy(), report["classes"])
        assert fold["macro_f1"] == pytest.approx(expected["macro_f1"])
        assert fold["confusion_matrix"] == expected["confusion_matrix"]
        assert fold["n_train"] == 6  # half of the 12 train vertebrae per fold
    assert report["mean"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in report["folds"]]))
    assert report["pool_class_counts"] == {"0": 6, "1": 2, "2": 2, "3": 2}
    # the saved fold model reproduces its predictions
    model, checkpoint = load_grader(tmp_path / "ck" / "g3d" / "grader3d_fold2.pth")
    assert len(checkpoint["train_keys"]) == 6
    samples, _ = load_grader_samples(dataroot, {"val": read_split(split)["val"]}, [0, 0, 0], WIDE_WINDOW)
    with torch.no_grad():
        volumes = torch.stack([torch.from_numpy(s.volume.astype(np.float32))[None] for s in samples])
        probs = torch.softmax(model(volumes)[0], dim=1).numpy()
    saved = table[table["Fold"] == 2].set_index("Vertebra").loc[[s.key for s in samples], ["P0", "P1", "P2", "P3"]]
    assert np.allclose(probs, saved.to_numpy(), atol=1e-5)


def test_prediction_table_errors() -> None:
    with pytest.raises(ValueError, match="missing column"):
        score_prediction_table(pd.DataFrame({"Vertebra": ["a"], "Label": [0]}))
    table = pd.DataFrame({"Vertebra": ["a"], "Label": [0], "Dataset": ["train"], "Fold": [1], "Predicted": [0]})
    with pytest.raises(ValueError, match="no row of the val split"):
        score_prediction_table(table)


def test_missing_split_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--dataroot", str(tmp_path), "--split_json", str(tmp_path / "none.json"), "--name", "x", "--gpu_ids", "-1"]
    assert train_grader3d.main(argv) == 1
    assert "none.json" in capsys.readouterr().err.strip().splitlines()[-1]
