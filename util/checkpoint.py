"""One-file training checkpoints: networks, optimizers, schedulers, AMP scaler, progress, RNG states, options.

A checkpoint is a dict of tensors and plain containers only, so it loads with
``torch.load(path, weights_only=True)``:

    {"format": "healthivert-checkpoint", "version": 1,
     "model": {"nets": {"G": state_dict, "D_1": ..., ...}, "optimizers": {"G": ..., ...},
               "schedulers": [...], "scaler": {...}},
     "progress": {"epoch": int, "epoch_iter": int, "total_iters": int, "epoch_done": bool},
     "rng": {"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]},
     "options": {flag: value, ...}}

``epoch`` is the epoch in progress and ``epoch_iter`` the batches of it already trained
(``epoch_done`` marks a checkpoint written at the end of the epoch). Files are
``<checkpoints_dir>/<name>/latest.pth``, ``<epoch>.pth`` and, with ``--save_by_iter``,
``iter_<n>.pth``, all written atomically.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.fileio import atomic_torch_save, read_torch_file

CHECKPOINT_FORMAT = "healthivert-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Progress:
    """Where training stands: epoch in progress, batches of it done, iterations in total."""

    epoch: int
    epoch_iter: int
    total_iters: int
    epoch_done: bool = False


def rng_state() -> dict[str, Any]:
    """Python, NumPy, PyTorch (and CUDA) generator states as tensors and lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), list(internal), gauss],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_path(folder: str | Path, tag: str | int) -> Path:
    """``<folder>/<tag>.pth`` (tag: 'latest', an epoch number or 'iter_<n>')."""
    return Path(folder) / f"{tag}.pth"


def save_checkpoint(path: str | Path, model: Any, progress: Progress, options: dict[str, Any]) -> Path:
    """Write one checkpoint file atomically; returns its path.

    ``model`` is pix2pix-shaped with ``state_dict()`` returning nets (without DDP wrappers),
    optimizers, schedulers and the AMP scaler (``models.base_model.BaseModel.state_dict``).
    """
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model.state_dict(),
                  "progress": asdict(progress), "rng": rng_state(), "options": options}
    atomic_torch_save(checkpoint, path)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for a missing or foreign file."""
    checkpoint = read_torch_file(path, map_location=map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} file")
    return checkpoint


def restore_checkpoint(checkpoint: dict[str, Any], model: Any, restore_rng: bool = True) -> Progress:
    """Load the model state (and RNG states) of a checkpoint; returns its progress."""
    model.load_state_dict(checkpoint["model"])
    if restore_rng:
        set_rng_state(checkpoint["rng"])
    return Progress(**checkpoint["progress"])


def generator_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The generator's ``state_dict`` from a training checkpoint (for synthesis scripts)."""
    checkpoint = load_checkpoint(path, map_location)
    nets = checkpoint["model"].get("nets", {})
    if "G" not in nets:
        raise ValueError(f"{path}: checkpoint holds no generator weights")
    return nets["G"]
