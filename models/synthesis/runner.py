"""Running a generator for inference on stacks of slices (docs/design.md, 'Iterative synthesis').

Each synthesis step is one pass over all its slices; on GPU they go through the generator at once,
on CPU in chunks of ``CPU_BATCH_SIZE`` (the generator is compute-bound there, so larger batches gain
nothing and lose cache locality; see benchmarks/bench_synthesis.py). ``GeneratorRunner`` also runs the
generator channels-last with spectral-norm weights computed once per call and, optionally, under
autocast (``--amp`` with ``--amp_dtype``: bfloat16 by default, float16 on GPU; ``--cpu_bf16`` on CPU).
With a generator compiled by ``models.compilation`` (``--compile``) every chunk is padded to the chunk size
(repeating its last slice; the padding's outputs are dropped), so that one compiled graph serves the run.
"""

from __future__ import annotations

import typing
import warnings

import numpy as np
import torch
from torch.nn.utils import parametrize

from models.amp import resolve_amp_dtype
from models.compilation import is_compiled
from models.networks import GeneratorOutput
from util.cpu_features import onednn_bf16_supported

CPU_BATCH_SIZE = 4  # slices per generator call on CPU: the fastest per slice in benchmarks/bench_synthesis.py


class Generator(typing.Protocol):
    """What the synthesis needs of a generator (``models.networks.HealthiVertGenerator``; the AOT-GAN baseline's
    ``models.aotgan_networks.AOTSynthesisGenerator``); ``load_generator`` builds the one the checkpoint names."""

    def __call__(self, masked_ct: torch.Tensor, offset_plane: torch.Tensor, band_mask: torch.Tensor,
                 cam: torch.Tensor, mask_height_px: float) -> GeneratorOutput: ...


def autocast_dtype(device: torch.device, amp: bool, cpu_bf16: bool, amp_dtype: str = "auto") -> torch.dtype | None:
    """Autocast type for inference: ``--amp`` with ``--amp_dtype`` (``models.amp``), or bfloat16 on CPU with
    ``cpu_bf16``; None = full precision."""
    if cpu_bf16 and device.type == "cpu":
        return torch.bfloat16
    return resolve_amp_dtype(amp, amp_dtype, device)


def resolve_batch_size(batch_size: int, device: torch.device) -> int:
    """Slices per generator call: ``batch_size`` when >= 0 (0: all slices of a step at once), else
    automatic: all slices on GPU, ``CPU_BATCH_SIZE`` on CPU (larger batches only add cache misses there)."""
    if batch_size >= 0:
        return batch_size
    return 0 if device.type == "cuda" else CPU_BATCH_SIZE


class GeneratorRunner:
    """Runs a generator for inference on stacks of slices: chunks of ``batch_size`` (0: all at once),
    no autograd, spectral-norm weights computed once per call, optional autocast to ``amp_dtype``.
    Inputs and outputs are NumPy (N, H, W) float32 arrays; ``calls`` counts generator calls."""

    def __init__(self, generator: torch.nn.Module | Generator, device: torch.device | str = "cpu",
                 batch_size: int = CPU_BATCH_SIZE, amp_dtype: torch.dtype | None = None) -> None:
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0: all slices at once), got {batch_size}")
        self.generator = generator
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.amp_dtype = amp_dtype
        self.calls = 0
        if amp_dtype == torch.bfloat16 and self.device.type == "cpu" and not onednn_bf16_supported():
            warnings.warn("bfloat16 on this CPU (no AVX-512 / AMX) runs convolutions in a generic kernel, several "
                          "times slower than float32 (benchmarks/README.md): synthesize in float32 here", stacklevel=2)

    def __call__(self, masked_ct: np.ndarray, offsets: np.ndarray, band_mask: np.ndarray, cam: np.ndarray,
                 mask_height_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fine CT (windowed), target probability (N, H, W) and height h_hat (N,) in rows."""
        count = len(masked_ct)
        step = self.batch_size or max(count, 1)
        outputs = [self._run(masked_ct[i:i + step], offsets[i:i + step], band_mask[i:i + step], cam[i:i + step],
                             mask_height_px) for i in range(0, count, step)]
        return tuple(np.concatenate(parts) for parts in zip(*outputs))  # type: ignore[return-value]

    def padded_size(self, count: int) -> int:
        """Slices a call of ``count`` slices runs with: ``count`` for an eager generator; for a compiled one the
        chunk size (one static graph), or at least 2 with ``batch_size`` 0 (all slices at once: after the second
        size PyTorch compiles one graph with a symbolic batch, and 2 keeps batch 1 from needing its own)."""
        if not is_compiled(self.generator):
            return count
        return max(self.batch_size, count) if self.batch_size else max(count, 2)

    def _run(self, masked_ct: np.ndarray, offsets: np.ndarray, band_mask: np.ndarray, cam: np.ndarray,
             mask_height_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = len(masked_ct)
        padding = self.padded_size(count) - count
        if padding:
            masked_ct, offsets, band_mask, cam = (np.concatenate([a, np.repeat(a[-1:], padding, axis=0)])
                                                  for a in (masked_ct, offsets, band_mask, cam))

        def image(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[:, None].to(self.device)

        shape = (len(offsets), 1) + masked_ct.shape[1:]
        offset_plane = torch.as_tensor(offsets, dtype=torch.float32).view(-1, 1, 1, 1).expand(shape)
        self.calls += 1
        with torch.inference_mode(), parametrize.cached(), torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            out = self.generator(image(masked_ct), offset_plane.contiguous().to(self.device), image(band_mask),
                                 image(cam), float(mask_height_px))
        return (out.fine_ct[:count, 0].float().cpu().numpy(), out.fine_target_seg[:count, 0].float().cpu().numpy(),
                out.fine_height[:count].float().cpu().numpy())
