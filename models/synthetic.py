"""A synthetic, dataset-shaped batch for smoke tests, benchmarks and demos of the model alone.

Keys and shapes follow the dataset item contract (CONTRACTS.md, collated): images (B,1,H,W)
float32 with CT in [-1, 1], rows and heights (B,). The CT is smooth with a bright 'target vertebra'
centred in each sample's band and bright 'neighbours' above and below; bands sit at different rows.
"""

from __future__ import annotations

import torch

from data.masking import BAND_FILL_VALUE


def synthetic_batch(batch: int = 2, size: int = 64, seed: int = 0, target_fills_band: bool = False) -> dict:
    """A collated batch of ``batch`` samples of ``size`` x ``size`` pixels (band height size // 4).

    With ``target_fills_band`` the target height h equals the band height, so the height-adaptive
    composition never moves rows (H = h); otherwise h is about 2/3 of the band height.
    """
    gen = torch.Generator().manual_seed(seed)
    band_height = size // 4
    rows = torch.arange(size).view(1, 1, size, 1).float()
    cols = torch.arange(size).view(1, 1, 1, size).float()
    band_top = torch.tensor([size // 8 + (size // 4) * (i % 3) for i in range(batch)])
    band_centre = band_top + band_height // 2
    half_target = band_height // 2 if target_fills_band else band_height // 3
    target_top = band_centre - half_target
    target_bottom = band_centre + half_target
    top, bottom = target_top.view(-1, 1, 1, 1), target_bottom.view(-1, 1, 1, 1)
    columns = (cols >= size // 4) & (cols < 3 * size // 4)
    target = ((rows >= top) & (rows <= bottom) & columns).float()
    band = ((rows >= band_top.view(-1, 1, 1, 1)) & (rows < (band_top + band_height).view(-1, 1, 1, 1))).float()
    band = band.expand(batch, 1, size, size).contiguous()
    neighbours = (((rows < top - 3) | (rows > bottom + 3)) & columns).float()
    real = -0.6 + 0.2 * torch.sin(rows / 7.0) + 0.9 * target + 0.7 * neighbours
    real = (real + 0.02 * torch.randn(batch, 1, size, size, generator=gen)).clamp(-1, 1)
    height = (target_bottom - target_top).float()
    return {
        "masked_ct": torch.where(band > 0, torch.tensor(BAND_FILL_VALUE), real), "real_ct": real, "band_mask": band,
        "offset_plane": torch.rand(batch, 1, 1, 1, generator=gen).expand(batch, 1, size, size).contiguous(),
        "cam": torch.rand(batch, 1, size, size, generator=gen), "neighbour_label": neighbours * (1 - band),
        "target_label": target, "target_top": target_top, "target_bottom": target_bottom, "band_top": band_top,
        "band_centre": band_centre, "height_px": height, "height_mm": height,
        "key": [f"case{i}_20" for i in range(batch)], "slice_index": torch.arange(batch),
    }
