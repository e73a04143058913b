"""Mixed precision for training and inference: ``--amp`` and ``--amp_dtype``, autocast, one GradScaler per network.

``--amp`` runs the networks under autocast with float32 master weights (the parameters and optimizer
states stay float32):

- ``--amp_dtype bf16``: bfloat16 autocast, no loss scaling (bfloat16 has float32's exponent range);
  on CPU this is the only type, on GPU it needs bfloat16 support (Ampere or newer);
- ``--amp_dtype fp16``: float16 autocast on GPU with dynamic loss scaling;
- ``--amp_dtype auto`` (default): bf16 where supported (CPU; GPUs with bfloat16), else fp16.

Each network with an optimizer gets its own :class:`torch.amp.GradScaler` (float16 only): the generator's
heavily weighted losses drive its scale far lower than a discriminator's, so a shared scale would skip
steps of the other networks and let their small gradients underflow.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from util.settings import FromOptions

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AmpSettings(FromOptions):
    """``--amp`` (autocast on) and ``--amp_dtype`` (auto, bf16 or fp16), with their defaults."""

    amp: bool = False
    amp_dtype: str = "auto"


def add_amp_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--amp`` and ``--amp_dtype`` (unless an earlier option group defined them)."""
    if "--amp" not in parser._option_string_actions:
        parser.add_argument("--amp", action="store_true",
                            help="mixed precision: autocast with float32 master weights (see --amp_dtype)")
    if "--amp_dtype" not in parser._option_string_actions:
        parser.add_argument("--amp_dtype", default=AmpSettings.amp_dtype, choices=["auto", *AMP_DTYPES],
                            help="--amp type: bf16 (no loss scaling; CPU and bfloat16 GPUs), fp16 (GPU, with one "
                                 "loss scaler per network), auto: bf16 where supported, else fp16")
    return parser


def bf16_supported(device: torch.device) -> bool:
    """Whether autocast can use bfloat16 on ``device`` (always on CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def resolve_amp_dtype(amp: bool, amp_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of ``--amp``/``--amp_dtype`` on ``device`` (None = full precision); one-line errors."""
    if not amp:
        return None
    if amp_dtype == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"--amp_dtype {amp_dtype!r}: expected auto, bf16 or fp16")
    dtype = AMP_DTYPES[amp_dtype]
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"--amp_dtype fp16 needs a GPU (device {device}); use --amp_dtype bf16 on the CPU")
    if dtype == torch.bfloat16 and not bf16_supported(device):
        raise ValueError(f"--amp_dtype bf16: {device} does not support bfloat16; use --amp_dtype fp16")
    return dtype


@dataclass(frozen=True)
class MixedPrecision:
    """Autocast settings of one device: ``dtype`` None means full precision."""

    device: torch.device
    dtype: torch.dtype | None = None

    @classmethod
    def from_options(cls, opt: argparse.Namespace, device: torch.device) -> MixedPrecision:
        """From ``opt.amp`` and ``opt.amp_dtype`` (absent: the :class:`AmpSettings` defaults)."""
        settings = AmpSettings.from_options(opt)
        return cls(device, resolve_amp_dtype(bool(settings.amp), settings.amp_dtype, device))

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def scales_loss(self) -> bool:
        """Whether gradients need loss scaling (float16 only)."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for this device and type (a no-op context when disabled)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A new GradScaler, enabled only for float16 (one per network and optimizer)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.scales_loss)


def scaled_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward of ``loss``, optimizer step and scale update with ``scaler`` (plain when it is disabled)."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def scaler_states(scalers: dict[str, torch.amp.GradScaler]) -> dict[str, Any]:
    """Network name -> GradScaler state (for checkpoints)."""
    return {name: scaler.state_dict() for name, scaler in scalers.items()}


def load_scaler_states(scalers: dict[str, torch.amp.GradScaler], state: dict[str, Any]) -> None:
    """Restore :func:`scaler_states`; an older checkpoint's single ``scaler`` state goes to every network."""
    per_network = state.get("scalers")
    for name, scaler in scalers.items():
        saved = per_network.get(name) if per_network else state.get("scaler")
        if saved:
            scaler.load_state_dict(saved)
