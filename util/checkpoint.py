"""One-file training checkpoints: networks, optimizers, schedulers, AMP scalers, progress, RNG states, options.

A checkpoint is a dict of tensors and plain containers only, so it loads with
``torch.load(path, weights_only=True)``:

    {"format": "healthivert-checkpoint", "version": 2,
     "model": {"nets": {"G": state_dict, "D_1": ..., ...}, "optimizers": {"G": ..., ...},
               "schedulers": [...], "scalers": {"G": {...}, "D_1": ...}},  # one GradScaler per optimizer
     "progress": {"epoch": int, "epoch_iter": int, "total_iters": int, "epoch_done": bool},
     "rng": [{"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": ByteTensor}, ...],  # one per rank
     "options": {flag: value, ...}}

``epoch`` is the epoch in progress and ``epoch_iter`` the batches of it already trained
(``epoch_done`` marks a checkpoint written at the end of the epoch). Files are
``<checkpoints_dir>/<name>/latest.pth``, ``<epoch>.pth`` and, with ``--save_by_iter``,
``iter_<n>.pth``, all written atomically. Every tensor is saved on the CPU, so a file loads on any
device; ``rng`` holds each rank's own CPU and GPU generator states (version 1 files: a single dict
of rank 0's states with one CUDA state per visible GPU; still read).
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
CHECKPOINT_VERSION = 2


@dataclass
class Progress:
    """Where training stands: epoch in progress, batches of it done, iterations in total."""

    epoch: int
    epoch_iter: int
    total_iters: int
    epoch_done: bool = False


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's Python, NumPy and PyTorch generator states (and its own GPU's, when ``device`` is CUDA)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), list(internal), gauss],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned (the CUDA state onto ``device`` when both are CUDA)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].cpu().numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_state = state.get("cuda")
    if isinstance(cuda_state, (list, tuple)):  # version 1: one state per visible GPU, saved by rank 0
        cuda_state = cuda_state[device.index] if device is not None and device.index is not None and \
            device.index < len(cuda_state) else None
    if cuda_state is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda_state.cpu(), device)


def rank_rng_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-rank RNG states of a checkpoint (version 1 files hold rank 0's only)."""
    states = checkpoint["rng"]
    return [states] if isinstance(states, dict) else list(states)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside dicts, lists and tuples copied to the CPU (checkpoints load anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(value) for value in obj)
    return obj


def checkpoint_path(folder: str | Path, tag: str | int) -> Path:
    """``<folder>/<tag>.pth`` (tag: 'latest', an epoch number or 'iter_<n>')."""
    return Path(folder) / f"{tag}.pth"


def save_checkpoint(path: str | Path, model: Any, progress: Progress, options: dict[str, Any],
                    rng_states: list[dict[str, Any]] | None = None) -> Path:
    """Write one checkpoint file atomically, every tensor on the CPU; returns its path.

    ``model`` is pix2pix-shaped with ``state_dict()`` returning nets (without DDP wrappers),
    optimizers, schedulers and the AMP scalers (``models.base_model.BaseModel.state_dict``).
    ``rng_states`` holds one :func:`rng_state` per rank (default: this process's).
    """
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model.state_dict(),
                  "progress": asdict(progress), "rng": rng_states if rng_states is not None else [rng_state()],
                  "options": options}
    checkpoint = to_cpu(checkpoint)
    atomic_torch_save(checkpoint, path)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for a missing or foreign file.

    Keep ``map_location`` on the CPU for a resume: the networks and optimizers copy their tensors to their
    own device, while the RNG states must stay CPU tensors.
    """
    checkpoint = read_torch_file(path, map_location=map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} file")
    return checkpoint


def restore_checkpoint(checkpoint: dict[str, Any], model: Any, restore_rng: bool = True, rank: int = 0,
                       device: torch.device | None = None) -> Progress:
    """Load the model state and this ``rank``'s RNG states of a checkpoint; returns its progress.

    A rank the checkpoint has no state for (resuming on more processes than it was saved from) keeps
    its RNG as seeded.
    """
    model.load_state_dict(checkpoint["model"])
    states = rank_rng_states(checkpoint)
    if restore_rng and rank < len(states):
        set_rng_state(states[rank], device)
    return Progress(**checkpoint["progress"])


def generator_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The generator's ``state_dict`` from a training checkpoint (for synthesis scripts)."""
    checkpoint = load_checkpoint(path, map_location)
    nets = checkpoint["model"].get("nets", {})
    if "G" not in nets:
        raise ValueError(f"{path}: checkpoint holds no generator weights")
    return nets["G"]
