"""Batched contextual attention (Yu et al., "Generative Image Inpainting with Contextual Attention", CVPR 2018).

Every foreground position of a feature map is matched (cosine-like score of 3x3 patches on a
grid downsampled by ``rate``) against the *unmasked* background patches of the same sample; the
softmax-weighted background patches (``2*rate`` wide, taken at full feature resolution) are pasted
back with a transposed convolution. The whole batch goes through one grouped convolution for the
matching and one grouped transposed convolution for the pasting: no Python loop over samples, and
each sample uses its own mask (the reference implementation used sample 0's mask for all).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding_amounts(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def extract_patches(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """All ``kernel``x``kernel`` patches of ``x`` (B,C,H,W) with SAME padding, as (B, L, C, k, k).

    Patches are ordered row-major over the output grid (L = ceil(H/stride) * ceil(W/stride)).
    """
    batch, channels, height, width = x.shape
    top, bottom = same_padding_amounts(height, kernel, stride)
    left, right = same_padding_amounts(width, kernel, stride)
    padded = F.pad(x, (left, right, top, bottom))
    cols = F.unfold(padded, kernel_size=kernel, stride=stride)  # (B, C*k*k, L)
    return cols.transpose(1, 2).reshape(batch, -1, channels, kernel, kernel)


def fuse_diagonal(scores: torch.Tensor, grid_b: tuple[int, int], grid_f: tuple[int, int]) -> torch.Tensor:
    """Yu et al.'s score fusion: convolve the (background x foreground) score matrix with a 3x3
    identity kernel, once in row-major and once in column-major patch order.

    scores: (B, Lb, Lf) with Lb = hb*wb background patches and Lf = hf*wf foreground positions.
    Returns the fused scores with the same shape and ordering.
    """
    batch = scores.shape[0]
    (hb, wb), (hf, wf) = grid_b, grid_f

    def diag3(m: torch.Tensor) -> torch.Tensor:
        # out[l, p] = m[l-1, p-1] + m[l, p] + m[l+1, p+1] (zero outside): conv with eye(3)
        padded = F.pad(m, (1, 1, 1, 1))
        return padded[:, :-2, :-2] + padded[:, 1:-1, 1:-1] + padded[:, 2:, 2:]

    fused = diag3(scores)
    transposed = fused.view(batch, hb, wb, hf, wf).permute(0, 2, 1, 4, 3).reshape(batch, wb * hb, wf * hf)
    fused = diag3(transposed)
    return fused.view(batch, wb, hb, wf, hf).permute(0, 2, 1, 4, 3).reshape(batch, hb * wb, hf * wf)


class ContextualAttention(nn.Module):
    """Contextual attention with per-sample masks, batched by grouped convolutions.

    Args:
        ksize: matching patch size (3).
        rate: downsampling of the matching grid; background patches pasted back are ``2*rate`` wide (2).
        softmax_scale: temperature of the softmax over background patches (10).
        fuse: apply the 3x3 diagonal score fusion (True, fuse_k = 3).
    """

    def __init__(self, ksize: int = 3, rate: int = 2, softmax_scale: float = 10.0, fuse: bool = True) -> None:
        super().__init__()
        if rate % 2:
            raise ValueError(f"ContextualAttention: rate must be even, got {rate}")
        self.ksize = ksize
        self.rate = rate
        self.softmax_scale = softmax_scale
        self.fuse = fuse

    def available_background(self, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, L, 1, 1) float: 1 where a background patch on the matching grid holds no masked pixel.

        mask: (B,1,H,W) at any resolution, 1 inside the hole; resampled (nearest) to ``grid``.
        """
        small = F.interpolate(mask.float(), size=grid, mode="nearest")
        top, bottom = same_padding_amounts(grid[0], self.ksize, 1)
        left, right = same_padding_amounts(grid[1], self.ksize, 1)
        # mean over the zero-padded patch == 0  <=>  no masked pixel in the patch
        patch_mean = F.avg_pool2d(F.pad(small, (left, right, top, bottom)), self.ksize, stride=1)
        return (patch_mean == 0).float().reshape(mask.shape[0], -1, 1, 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend every position of ``features`` to its own sample's unmasked background.

        Args:
            features: (B, C, h, w) feature map (matched against itself); h, w divisible by ``rate``.
            mask: (B, 1, H, W) hole mask (1 = missing) at any resolution.

        Returns:
            output: (B, C, h, w) reconstructed features (float32).
            offsets: (B, 2, h/rate, w/rate) float, (row, column) displacement of the best-matching
                background patch, in matching-grid cells.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._attend(features.float(), mask)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, height, width = x.shape
        rate = self.rate
        if height % rate or width % rate:
            raise ValueError(f"ContextualAttention: feature size {height}x{width} not divisible by rate {rate}")
        raw_kernel = 2 * rate
        # background patches for pasting, full feature resolution: (B*L, C, 2r, 2r)
        raw_patches = extract_patches(x, raw_kernel, rate).reshape(-1, channels, raw_kernel, raw_kernel)
        small = x[:, :, ::rate, ::rate]  # nearest downsampling by 1/rate
        grid = (small.shape[2], small.shape[3])
        num_patches = grid[0] * grid[1]
        # normalised matching kernels (B*L, C, k, k)
        patches = extract_patches(small, self.ksize, 1)
        norms = patches.pow(2).sum(dim=(2, 3, 4), keepdim=True).sqrt().clamp_min(1e-4)
        kernels = (patches / norms).reshape(-1, channels, self.ksize, self.ksize)
        top, bottom = same_padding_amounts(grid[0], self.ksize, 1)
        left, right = same_padding_amounts(grid[1], self.ksize, 1)
        padded = F.pad(small, (left, right, top, bottom))
        query = padded.reshape(1, batch * channels, *padded.shape[2:])
        scores = F.conv2d(query, kernels, groups=batch)  # (1, B*L, hb, wb)
        scores = scores.view(batch, num_patches, num_patches)
        if self.fuse:
            scores = fuse_diagonal(scores, grid, grid)
        scores = scores.view(batch, num_patches, *grid)
        available = self.available_background(mask, grid)
        attention = F.softmax(scores * available * self.softmax_scale, dim=1) * available
        best = attention.argmax(dim=1)  # (B, hb, wb)
        rows = torch.arange(grid[0], device=x.device).view(1, -1, 1)
        cols = torch.arange(grid[1], device=x.device).view(1, 1, -1)
        offsets = torch.stack([best // grid[1] - rows, best % grid[1] - cols], dim=1).float()
        pasted = F.conv_transpose2d(attention.reshape(1, batch * num_patches, *grid), raw_patches,
                                    stride=rate, padding=rate // 2, groups=batch) / 4.0
        return pasted.view(batch, channels, height, width), offsets


def flow_to_rgb(flow: torch.Tensor, max_norm: float | None = None) -> torch.Tensor:
    """Colour-code a displacement field (B,2,H,W) as RGB in [0,1] (hue = direction, saturation = length)."""
    dy, dx = flow[:, 0], flow[:, 1]
    magnitude = torch.sqrt(dx * dx + dy * dy)
    scale = max_norm if max_norm is not None else float(magnitude.max().clamp_min(1e-6))
    hue = (torch.atan2(-dy, -dx) / math.pi + 1.0) / 2.0  # [0, 1]
    saturation = (magnitude / scale).clamp(0, 1)
    sector = hue * 6.0
    channels = []
    for shift in (5.0, 3.0, 1.0):  # HSV -> RGB with V = 1
        k = torch.remainder(shift + sector, 6.0)
        channels.append(1.0 - saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=1)
