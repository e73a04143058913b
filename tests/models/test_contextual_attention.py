"""Contextual attention's score fusion against its definition (two 3x3 identity convolutions of the flattened
score matrix, in row-major and in column-major patch order)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.contextual_attention import fuse_diagonal


def fuse_by_definition(scores: torch.Tensor, grid_b: tuple[int, int], grid_f: tuple[int, int]) -> torch.Tensor:
    """The fusion as Yu et al. wrote it: conv2d with eye(3) on the matrix, transpose both patch orders to
    column-major, conv2d with eye(3) again, transpose back."""
    batch = scores.shape[0]
    (hb, wb), (hf, wf) = grid_b, grid_f
    eye = torch.eye(3, dtype=scores.dtype).view(1, 1, 3, 3)
    fused = F.conv2d(scores[:, None], eye, padding=1)[:, 0]
    transposed = fused.view(batch, hb, wb, hf, wf).permute(0, 2, 1, 4, 3).reshape(batch, wb * hb, wf * hf)
    fused = F.conv2d(transposed[:, None], eye, padding=1)[:, 0]
    return fused.view(batch, wb, hb, wf, hf).permute(0, 2, 1, 4, 3).reshape(batch, hb * wb, hf * wf)


@pytest.mark.parametrize("grid_b, grid_f", [((4, 4), (4, 4)), ((3, 5), (3, 5)), ((2, 3), (4, 2)), ((1, 4), (3, 1))])
def test_fuse_diagonal_matches_its_definition(grid_b, grid_f):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, grid_b[0] * grid_b[1], grid_f[0] * grid_f[1], generator=generator, dtype=torch.float64)
    got = fuse_diagonal(scores, grid_b, grid_f)
    assert torch.allclose(got, fuse_by_definition(scores, grid_b, grid_f), atol=1e-12, rtol=0)
    before = scores.clone()
    fuse_diagonal(scores, grid_b, grid_f)
    assert torch.equal(scores, before)
