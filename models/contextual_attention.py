"""Batched contextual attention (Yu et al., "Generative Image Inpainting with Contextual Attention", CVPR 2018).

Every foreground position of a feature map is matched (cosine-like score of 3x3 patches on a
grid downsampled by ``rate``) against the *unmasked* background patches of the same sample; the
softmax-weighted background patches (``2*rate`` wide, taken at full feature resolution) are pasted
back with a transposed convolution. The whole batch goes through one batched matrix product for the
matching and one for the pasting (``torch.bmm``, the latter followed by col2im, ``F.fold``): no
Python loop over samples, and each sample uses its own mask (the reference implementation used
sample 0's mask for all).
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


def unfold_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """All ``kernel``x``kernel`` patches of ``x`` (B,C,H,W) with SAME padding, as columns (B, C*k*k, L).

    Rows are ordered (channel, kernel row, kernel column), columns row-major over the output grid
    (L = ceil(H/stride) * ceil(W/stride)).
    """
    top, bottom = same_padding_amounts(x.shape[2], kernel, stride)
    left, right = same_padding_amounts(x.shape[3], kernel, stride)
    return F.unfold(F.pad(x, (left, right, top, bottom)), kernel_size=kernel, stride=stride)


def fuse_diagonal(scores: torch.Tensor, grid_b: tuple[int, int], grid_f: tuple[int, int]) -> torch.Tensor:
    """Yu et al.'s score fusion: convolve the (background x foreground) score matrix with a 3x3
    identity kernel, once in row-major and once in column-major patch order.

    scores: (B, Lb, Lf) with Lb = hb*wb background patches and Lf = hf*wf foreground positions.
    Returns the fused scores with the same shape and ordering.

    The column-major pass is done in the row-major layout, without transposing the matrix: one step along
    the column-major order is one row down, or from the last row to the top of the next column.
    """
    batch = scores.shape[0]
    (hb, wb), (hf, wf) = grid_b, grid_f
    # row-major pass: out[l, p] = m[l-1, p-1] + m[l, p] + m[l+1, p+1] (zero outside)
    fused = scores.clone()
    fused[:, 1:, 1:] += scores[:, :-1, :-1]
    fused[:, :-1, :-1] += scores[:, 1:, 1:]
    # column-major pass on the (B, hb, wb, hf, wf) view: previous / next position in column-major order
    m = fused.view(batch, hb, wb, hf, wf)
    out = m.clone()
    out[:, 1:, :, 1:, :] += m[:, :-1, :, :-1, :]  # both previous positions one row up
    out[:, 0, 1:, 1:, :] += m[:, -1, :-1, :-1, :]  # background wraps to the previous column's last row
    out[:, 1:, :, 0, 1:] += m[:, :-1, :, -1, :-1]  # foreground wraps
    out[:, 0, 1:, 0, 1:] += m[:, -1, :-1, -1, :-1]  # both wrap
    out[:, :-1, :, :-1, :] += m[:, 1:, :, 1:, :]  # both next positions one row down
    out[:, -1, :-1, :-1, :] += m[:, 0, 1:, 1:, :]  # background wraps to the next column's first row
    out[:, :-1, :, -1, :-1] += m[:, 1:, :, 0, 1:]  # foreground wraps
    out[:, -1, :-1, -1, :-1] += m[:, 0, 1:, 0, 1:]  # both wrap
    return out.view(batch, hb * wb, hf * wf)


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

    # Run eagerly inside a torch.compile'd generator (--compile): TorchInductor fuses the score fusion's strided
    # views into the softmax, which made the compiled generator 2.7x slower than eager on an AVX2 CPU
    # (benchmarks/README.md); the two matrix products are library calls either way.
    @torch.compiler.disable
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
        batch, _, height, width = x.shape
        rate = self.rate
        if height % rate or width % rate:
            raise ValueError(f"ContextualAttention: feature size {height}x{width} not divisible by rate {rate}")
        raw_kernel = 2 * rate
        # background patches for pasting, full feature resolution: (B, C*2r*2r, L)
        raw_patches = unfold_same(x, raw_kernel, rate)
        small = x[:, :, ::rate, ::rate]  # nearest downsampling by 1/rate
        grid = (small.shape[2], small.shape[3])
        num_patches = grid[0] * grid[1]
        # 3x3 patches of the matching grid (B, C*k*k, L); the matching kernels are them normalised
        patches = unfold_same(small, self.ksize, 1)
        norms = patches.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-4)
        # scores[b, p, l]: foreground position p (rows) against background patch l (columns), so that
        # the softmax and argmax over the background run along the contiguous last axis
        scores = torch.bmm(patches.transpose(1, 2), patches / norms)
        if self.fuse:
            scores = fuse_diagonal(scores, grid, grid)  # symmetric in the two axes for equal grids
        available = self.available_background(mask, grid).view(batch, 1, num_patches)
        attention = F.softmax(scores * (available * self.softmax_scale), dim=2) * available
        best = attention.argmax(dim=2).view(batch, *grid)
        rows = torch.arange(grid[0], device=x.device).view(1, -1, 1)
        cols = torch.arange(grid[1], device=x.device).view(1, 1, -1)
        offsets = torch.stack([best // grid[1] - rows, best % grid[1] - cols], dim=1).float()
        # paste: a transposed convolution with the background patches = matmul + col2im (fold)
        pasted = torch.bmm(raw_patches, attention.transpose(1, 2))  # (B, C*2r*2r, P)
        output = F.fold(pasted, (height, width), kernel_size=raw_kernel, stride=rate, padding=rate // 2) / 4.0
        return output, offsets


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
