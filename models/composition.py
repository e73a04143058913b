"""Height-adaptive composition (SHRM; docs/design.md, 'Composition'), vectorized over the batch by row-index arithmetic.

For each sample with target rows [x1, x2] (inclusive; h = x2 - x1 as in the reference) and a
predicted height h_hat, the generated height is H = max(ceil(h_hat), h), clamped to the band height
when given. With D = H - h the output slice is

    rows [0, x1 - D//2)             original rows shifted up by D//2 (original row r + D//2)
    rows [x1 - D//2, x1 - D//2 + H) generated rows (centred on the band, see below)
    rows [x1 - D//2 + H, end)       original rows from x2 downwards (shifted down)

The generator paints the vertebra centred on the band centre, which equals the target centre
c = (x1 + x2) // 2 except when the band was clamped at the image border; generated rows are read
shifted by ``band_centre - c`` so the painted vertebra lands where the composition puts it. Source
rows outside the image are clamped to the nearest border row (only possible when H < h).
The result is a gather of the generated image, hence differentiable with respect to its pixels.
"""

from __future__ import annotations

import torch


def generated_height_rows(target_top: torch.Tensor, target_bottom: torch.Tensor, generated_height: torch.Tensor,
                          mask_height_px: torch.Tensor | int | None = None) -> torch.Tensor:
    """H = max(ceil(h_hat), x2 - x1), clamped to ``mask_height_px`` when given; (B,) int64, >= 1."""
    target_height = (target_bottom - target_top).long()
    rows = torch.maximum(torch.ceil(generated_height.detach()).long(), target_height)
    if mask_height_px is not None:
        rows = torch.minimum(rows, torch.as_tensor(mask_height_px, device=rows.device).long())
    return rows.clamp_min(1)


def composition_indices(image_rows: int, target_top: torch.Tensor, target_bottom: torch.Tensor,
                        band_centre: torch.Tensor, generated_rows: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row sources of the composed slice.

    Args:
        image_rows: number of rows of the slice.
        target_top, target_bottom: (B,) inclusive target rows x1, x2 in the original slice.
        band_centre: (B,) centre row of the band in the generator's output.
        generated_rows: (B,) H, rows taken from the generator.

    Returns:
        from_generated: (B, image_rows) bool, the row comes from the generator;
        original_row: (B, image_rows) int64 source row in the original (used where not from_generated);
        generated_row: (B, image_rows) int64 source row in the generated image (used where from_generated).
    """
    device = target_top.device
    top = target_top.long().view(-1, 1)
    bottom = target_bottom.long().view(-1, 1)
    rows_generated = generated_rows.long().view(-1, 1).to(device)
    half_growth = torch.div(rows_generated - (bottom - top), 2, rounding_mode="floor")
    start = top - half_growth
    stop = start + rows_generated
    rows = torch.arange(image_rows, device=device).view(1, -1)
    from_generated = (rows >= start) & (rows < stop)
    original_row = torch.where(rows < start, rows + half_growth, rows - stop + bottom)
    centre_shift = band_centre.long().view(-1, 1).to(device) - torch.div(top + bottom, 2, rounding_mode="floor")
    generated_row = rows + centre_shift
    last = image_rows - 1
    return from_generated, original_row.clamp(0, last), generated_row.clamp(0, last)


def compose_height_adaptive(original: torch.Tensor, generated: torch.Tensor, target_top: torch.Tensor,
                            target_bottom: torch.Tensor, band_centre: torch.Tensor, generated_height: torch.Tensor,
                            mask_height_px: torch.Tensor | int | None = None) -> torch.Tensor:
    """Compose the original slice with a generated vertebra of adaptive height (docs/design.md, 'Composition').

    Args:
        original: (B,C,H,W) original slice (CT or segmentation) holding the target at rows [x1, x2].
        generated: (B,C,H,W) generator output (band coordinates), same shape.
        target_top, target_bottom: (B,) inclusive target rows x1, x2 (int).
        band_centre: (B,) centre row of the band the generator filled (int).
        generated_height: (B,) predicted height h_hat in pixels (float; only its ceiling is used).
        mask_height_px: optional band height in pixels; H is clamped to it.

    Returns:
        (B,C,H,W) composed slice; gradients flow to ``generated`` (not to the height).
    """
    if original.shape != generated.shape:
        raise ValueError(f"compose_height_adaptive: shapes differ {tuple(original.shape)} vs {tuple(generated.shape)}")
    rows = generated_height_rows(target_top, target_bottom, generated_height, mask_height_px)
    from_generated, original_row, generated_row = composition_indices(
        original.shape[2], target_top, target_bottom, band_centre, rows)
    shape = (original.shape[0], 1, original.shape[2], 1)
    from_original = torch.take_along_dim(original, original_row.view(shape), dim=2)
    from_generator = torch.take_along_dim(generated, generated_row.view(shape), dim=2)
    return torch.where(from_generated.view(shape), from_generator, from_original)
