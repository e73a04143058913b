"""Checkpoint of the fracture classifier: ``<checkpoints_dir>/<name>/classifier.pth``, a plain dict
(arch, window, weights, options, validation metrics, training crop geometry) loadable with
``torch.load(weights_only=True)`` (docs/design.md, 'Checkpoints')."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from Attention.networks import FRACTURE_CLASS, NUM_CLASSES, build_classifier
from data.crops import load_crop
from util.fileio import atomic_torch_save, read_torch_file

CHECKPOINT_FILE = "classifier.pth"
CHECKPOINT_FORMAT = 1


def checkpoint_path(checkpoints_dir: str | Path, name: str) -> Path:
    """``<checkpoints_dir>/<name>/classifier.pth``."""
    return Path(checkpoints_dir) / name / CHECKPOINT_FILE


def plain_options(opt: argparse.Namespace) -> dict[str, Any]:
    """Options as a dict of plain Python values (paths as str, tuples as lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return {key: plain(value) for key, value in vars(opt).items()}


def save_classifier(path: str | Path, model: nn.Module, opt: argparse.Namespace, epoch: int,
                    metrics: dict[str, Any], crop_geometry: dict[str, Any] | None = None) -> None:
    """Write the checkpoint atomically: a plain dict loadable with ``torch.load(weights_only=True)``.

    ``crop_geometry`` (``crop_size`` voxels, ``crop_spacing_mm`` per axis) records the crops it was trained on.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "arch": opt.arch,
        "in_channels": 1,
        "num_classes": NUM_CLASSES,
        "fracture_class": FRACTURE_CLASS,
        "window_hu": [float(w) for w in opt.hu_window],
        "view_mm": float(opt.view_mm),
        "vertebra_margin_mm": None if opt.vertebra_margin_mm is None else float(opt.vertebra_margin_mm),
        "epoch": int(epoch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "options": plain_options(opt),
        "metrics": {k: v for k, v in metrics.items() if k != "fracture_probability"},
        **(crop_geometry or {}),
    }
    atomic_torch_save(state, path)


def training_crop_geometry(dataroot: str | Path, keys: Sequence[str]) -> dict[str, Any]:
    """``crop_size`` and ``crop_spacing_mm`` of the first crop of ``keys`` whose sidecar records them ({} if none)."""
    for key in keys:
        sidecar = load_crop(dataroot, key, need_ct=False).sidecar
        if "crop_size" in sidecar and "spacing_mm" in sidecar:
            return {"crop_size": [int(n) for n in sidecar["crop_size"]],
                    "crop_spacing_mm": [float(x) for x in sidecar["spacing_mm"]]}
    return {}


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the classifier of a checkpoint on ``device`` (eval mode); returns (model, checkpoint dict)."""
    checkpoint = read_torch_file(path, "classifier checkpoint",
                                 "; train one first with python Attention/train_classifier.py "
                                 "(same --name; its defaults fit these defaults)")
    missing = {"arch", "state_dict", "window_hu", "in_channels", "num_classes"} - set(checkpoint)
    if not isinstance(checkpoint, dict) or missing:
        raise ValueError(f"{path}: not a classifier checkpoint (missing {sorted(missing)})")
    model = build_classifier(checkpoint["arch"], checkpoint["in_channels"], checkpoint["num_classes"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit arch {checkpoint['arch']!r} ({err})") from None
    return model.to(device).eval(), checkpoint


__all__ = ["CHECKPOINT_FILE", "checkpoint_path", "load_classifier", "plain_options", "save_classifier",
           "training_crop_geometry"]
