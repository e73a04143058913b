"""Attention.checkpoint: the classifier checkpoint round-trips, loads with weights_only, refuses bad files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from Attention.checkpoint import checkpoint_path, load_classifier, plain_options, save_classifier
from Attention.networks import build_classifier
from Attention.slices import SliceInput


def _options() -> argparse.Namespace:
    return argparse.Namespace(arch="small", hu_window=[-1000.0, 2000.0], view_mm=40.0, vertebra_margin_mm=4.0,
                              dataroot=Path("d/straightened"), n_slices=30)


def test_round_trip_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("small").eval()
    path = checkpoint_path(tmp_path, "cls")
    assert path == tmp_path / "cls" / "classifier.pth"
    path.parent.mkdir()
    save_classifier(path, model, _options(), epoch=3, metrics={"auc": 0.5, "fracture_probability": {"x": 1}},
                    crop_geometry={"crop_size": [64, 48, 40], "crop_spacing_mm": [1.0, 1.0, 1.0]})
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["window_hu"] == [-1000.0, 2000.0] and raw["crop_size"] == [64, 48, 40]
    assert raw["view_mm"] == 40.0 and raw["vertebra_margin_mm"] == 4.0
    assert SliceInput.from_checkpoint(raw) == SliceInput((-1000.0, 2000.0), 40.0, 4.0)
    older = {k: v for k, v in raw.items() if k not in ("view_mm", "vertebra_margin_mm")}
    assert SliceInput.from_checkpoint(older) == SliceInput((-1000.0, 2000.0), 0.0, None)  # whole slices
    assert raw["options"]["dataroot"] == "d/straightened" and "fracture_probability" not in raw["metrics"]
    loaded, checkpoint = load_classifier(path)
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images))
    assert not loaded.training and checkpoint["arch"] == "small"


def test_plain_options_are_plain():
    assert plain_options(argparse.Namespace(p=Path("a/b"), t=(1, Path("c")))) == {"p": "a/b", "t": [1, "c"]}


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    path = tmp_path / "broken" / "classifier.pth"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable classifier checkpoint"):
        load_classifier(path)
    save_classifier(path, build_classifier("small"), _options(), epoch=1, metrics={})
    state = torch.load(path, weights_only=True)
    state["arch"] = "seresnet50"
    torch.save(state, path)
    with pytest.raises(ValueError, match="weights do not fit arch 'seresnet50'"):
        load_classifier(path)
    with pytest.raises(FileNotFoundError, match="classifier checkpoint not found"):
        load_classifier(tmp_path / "none" / "classifier.pth")
