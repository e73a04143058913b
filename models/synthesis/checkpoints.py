"""Loading the generator of a training checkpoint for the synthesis (docs/design.md, 'Checkpoints')."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import find_model_using_name
from util.checkpoint import checkpoint_path, load_checkpoint


@dataclass
class LoadedModel:
    """A generator ready for inference and the training options it was saved with."""

    generator: torch.nn.Module  # HealthiVertGenerator, or another model's (``BaseModel.inference_generator``)
    options: dict[str, Any]
    path: Path


def checkpoint_file(checkpoints_dir: str | Path, name: str, epoch: str | int = "latest", load_iter: int = 0) -> Path:
    """``<checkpoints_dir>/<name>/<epoch>.pth`` (or ``iter_<load_iter>.pth`` when ``load_iter`` > 0)."""
    tag = f"iter_{load_iter}" if load_iter and int(load_iter) > 0 else str(epoch)
    return checkpoint_path(Path(checkpoints_dir) / name, tag)


def load_generator(path: str | Path, device: torch.device | str = "cpu", plane: str | None = None) -> LoadedModel:
    """Build the generator of a training checkpoint (``torch.load(weights_only=True)``) in eval mode.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a foreign
    checkpoint, weights that do not fit the saved options, or a model trained on another ``plane``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (train with --name {path.parent.name}, "
                                "or check --checkpoints_dir / --epoch)")
    checkpoint = load_checkpoint(path, map_location="cpu")
    options = dict(checkpoint.get("options") or {})
    trained_plane = options.get("plane")
    if plane is not None and trained_plane is not None and trained_plane != plane:
        raise ValueError(f"{path}: generator trained on {trained_plane} slices, cannot synthesize {plane} slices")
    nets = checkpoint.get("model", {}).get("nets", {})
    if "G" not in nets:
        raise ValueError(f"{path}: checkpoint holds no generator weights (model.nets.G)")
    try:
        generator = find_model_using_name(str(options.get("model") or "healthivert")).inference_generator(options)
    except (ValueError, NotImplementedError) as err:
        raise ValueError(f"{path}: {err}") from None
    try:
        generator.load_state_dict(nets["G"])
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: generator weights do not match --ngf {options.get('ngf', 16)} "
                         f"({first_line})") from None
    generator.eval().to(torch.device(device), memory_format=torch.channels_last)
    return LoadedModel(generator, options, path)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
