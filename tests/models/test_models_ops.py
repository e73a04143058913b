"""Batched contextual attention and vectorized height-adaptive composition against slow references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.composition import compose_height_adaptive, generated_height_rows
from models.contextual_attention import ContextualAttention, flow_to_rgb


# ---------------------------------------------------------------------------------------------- attention
def slow_contextual_attention(features: torch.Tensor, mask: torch.Tensor, rate: int = 2, ksize: int = 3,
                              scale: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Yu et al.'s layer one sample at a time, each sample with its own mask (fixed reference)."""
    outputs, offsets = [], []
    channels = features.shape[1]
    fuse_weight = torch.eye(3).view(1, 1, 3, 3)
    for i in range(features.shape[0]):
        x = features[i:i + 1]
        raw = F.unfold(x, 2 * rate, stride=rate, padding=rate // 2)  # SAME padding for k=2r, stride r
        raw = raw.view(1, channels, 2 * rate, 2 * rate, -1).permute(0, 4, 1, 2, 3)[0]
        small = F.interpolate(x, scale_factor=1.0 / rate, mode="nearest")
        hb, wb = small.shape[2:]
        patches = F.unfold(small, ksize, padding=ksize // 2).view(1, channels, ksize, ksize, -1)
        patches = patches.permute(0, 4, 1, 2, 3)[0]
        norms = torch.sqrt((patches ** 2).sum(dim=(1, 2, 3), keepdim=True)).clamp_min(1e-4)
        scores = F.conv2d(small, patches / norms, padding=ksize // 2)
        n = hb * wb
        scores = F.conv2d(scores.view(1, 1, n, n), fuse_weight, padding=1)
        scores = scores.view(1, hb, wb, hb, wb).permute(0, 2, 1, 4, 3).reshape(1, 1, n, n)
        scores = F.conv2d(scores, fuse_weight, padding=1)
        scores = scores.view(1, wb, hb, wb, hb).permute(0, 2, 1, 4, 3).reshape(1, n, hb, wb)
        small_mask = F.interpolate(mask[i:i + 1], size=(hb, wb), mode="nearest")
        available = (F.unfold(small_mask, ksize, padding=ksize // 2).mean(dim=1) == 0).float().view(1, n, 1, 1)
        attention = F.softmax(scores * available * scale, dim=1) * available
        best = attention.argmax(dim=1)[0]
        rows, cols = torch.meshgrid(torch.arange(hb), torch.arange(wb), indexing="ij")
        offsets.append(torch.stack([best // wb - rows, best % wb - cols]).float())
        outputs.append(F.conv_transpose2d(attention, raw, stride=rate, padding=rate // 2) / 4.0)
    return torch.cat(outputs), torch.stack(offsets)


def band_masks(size: int, bands: list[tuple[int, int]]) -> torch.Tensor:
    """(B,1,size,size) masks with rows [top, bottom) set to 1, one band per sample."""
    mask = torch.zeros(len(bands), 1, size, size)
    for i, (top, bottom) in enumerate(bands):
        mask[i, :, top:bottom] = 1.0
    return mask


def test_batched_attention_matches_per_sample_reference():
    torch.manual_seed(0)
    features = torch.randn(3, 8, 16, 16)
    mask = band_masks(64, [(8, 24), (30, 46), (48, 64)])  # differently placed bands, one at the border
    output, offsets = ContextualAttention()(features, mask)
    expected_output, expected_offsets = slow_contextual_attention(features, mask)
    assert output.shape == features.shape and offsets.shape == (3, 2, 8, 8)
    assert torch.allclose(output, expected_output, atol=1e-5, rtol=0)
    assert torch.equal(offsets, expected_offsets)


def test_batched_attention_matches_reference_on_rectangular_maps_with_gradients():
    """Rectangular matching grid (the score fusion's row- and column-major orders differ) and
    autograd through the batched matrix products and col2im, against the per-sample reference."""
    torch.manual_seed(3)
    features = torch.randn(2, 6, 12, 20, requires_grad=True)
    mask = torch.zeros(2, 1, 48, 80)
    mask[0, :, 16:32] = 1.0
    mask[1, :, 4:20, 40:80] = 1.0
    output, offsets = ContextualAttention()(features, mask)
    expected_output, expected_offsets = slow_contextual_attention(features, mask)
    assert output.shape == features.shape and offsets.shape == (2, 2, 6, 10)
    assert torch.allclose(output, expected_output, atol=1e-5, rtol=0)
    assert torch.equal(offsets, expected_offsets)
    weights = torch.randn_like(output)
    (grad,) = torch.autograd.grad((output * weights).sum(), features)
    (reference_grad,) = torch.autograd.grad((expected_output * weights).sum(), features)
    assert grad.abs().max() > 0
    assert torch.allclose(grad, reference_grad, atol=1e-5, rtol=1e-5)  # gradients reach |45|


def test_attention_never_picks_masked_background():
    torch.manual_seed(1)
    features = torch.randn(2, 4, 16, 16)
    mask = band_masks(64, [(0, 24), (40, 64)])
    _, offsets = ContextualAttention()(features, mask)
    rows = torch.arange(8).view(1, 8, 1)
    cols = torch.arange(8).view(1, 1, 8)
    source_rows = (offsets[:, 0] + rows).long()
    source_cols = (offsets[:, 1] + cols).long()
    assert (source_cols >= 0).all() and (source_cols < 8).all()
    # grid cell r covers image rows [8r, 8r+8); a 3x3 patch centred on row r touches rows r-1..r+1
    assert (source_rows[0] >= 4).all()  # sample 0: hole in grid rows 0..2
    assert (source_rows[1] <= 3).all()  # sample 1: hole in grid rows 5..7


def test_attention_samples_are_independent():
    torch.manual_seed(2)
    features = torch.randn(3, 8, 16, 16)
    mask = band_masks(64, [(8, 24), (24, 40), (40, 56)])
    layer = ContextualAttention()
    output, offsets = layer(features, mask)
    perturbed_features = features.clone()
    perturbed_features[1] += torch.randn(8, 16, 16)
    perturbed_mask = mask.clone()
    perturbed_mask[1] = 1.0 - perturbed_mask[1]
    output2, offsets2 = layer(perturbed_features, perturbed_mask)
    for i in (0, 2):
        assert torch.allclose(output[i], output2[i], atol=1e-6, rtol=0)
        assert torch.equal(offsets[i], offsets2[i])
    assert not torch.allclose(output[1], output2[1])


def test_attention_gradient_and_bad_size():
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    output, _ = ContextualAttention()(features, band_masks(32, [(8, 16), (16, 24)]))
    output.square().sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible"):
        ContextualAttention()(torch.randn(1, 4, 9, 8), torch.zeros(1, 1, 36, 32))


def test_flow_to_rgb_range():
    flow = torch.randn(2, 2, 8, 8) * 5
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (2, 3, 8, 8) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(flow_to_rgb(torch.zeros(1, 2, 4, 4)), torch.ones(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------- composition
def loop_compose(original, generated, top, bottom, centre, predicted, mask_height=None):
    """Composition (docs/design.md, 'Composition') one sample and one row at a time."""
    out = torch.empty_like(original)
    rows = original.shape[2]
    for b in range(original.shape[0]):
        x1, x2, c = int(top[b]), int(bottom[b]), int(centre[b])
        height = max(math.ceil(float(predicted[b])), x2 - x1)
        if mask_height is not None:
            height = min(height, mask_height)
        height = max(height, 1)
        half = (height - (x2 - x1)) // 2
        start, stop = x1 - half, x1 - half + height
        for r in range(rows):
            if start <= r < stop:
                source, row = generated, r + c - (x1 + x2) // 2
            elif r < start:
                source, row = original, r + half
            else:
                source, row = original, r - stop + x2
            out[b, :, r] = source[b, :, min(max(row, 0), rows - 1)]
    return out


def reference_slicing_compose(original, generated, top, bottom, predicted):
    """The reference implementation's slicing (valid for an unclamped band and H >= h)."""
    out = []
    rows = original.shape[2]
    for b in range(original.shape[0]):
        x1, x2 = int(top[b]), int(bottom[b])
        height = max(math.ceil(float(predicted[b])), x2 - x1)
        diff = height - (x2 - x1)
        upper, lower = x1 - diff // 2, x1 - diff // 2 + height
        image = torch.zeros_like(original[b])
        image[:, upper:lower] = generated[b, :, upper:lower]
        image[:, :upper] = original[b, :, diff // 2:x1]
        image[:, lower:] = original[b, :, x2:x2 + rows - lower]
        out.append(image)
    return torch.stack(out)


def composition_case():
    torch.manual_seed(3)
    rows = 64
    original = torch.randn(6, 2, rows, 5)
    generated = torch.randn(6, 2, rows, 5)
    #              interior  grow     top border  bottom border  H > band (clamped)  H < ceil
    top = torch.tensor([20, 24, 1, 50, 10, 30])
    bottom = torch.tensor([34, 34, 12, 63, 40, 41])
    centre = torch.tensor([27, 29, 10, 52, 25, 35])  # band centres (clamped at the borders for 2 and 3)
    predicted = torch.tensor([10.2, 17.5, 19.9, 18.0, 35.0, 11.0])
    return original, generated, top, bottom, centre, predicted


def test_composition_matches_loop_reference_exactly():
    original, generated, top, bottom, centre, predicted = composition_case()
    composed = compose_height_adaptive(original, generated, top, bottom, centre, predicted, mask_height_px=20)
    assert torch.equal(composed, loop_compose(original, generated, top, bottom, centre, predicted, 20))
    unclamped = compose_height_adaptive(original, generated, top, bottom, centre, predicted)
    assert torch.equal(unclamped, loop_compose(original, generated, top, bottom, centre, predicted))


def test_composition_matches_reference_slicing_for_interior_bands():
    original, generated, top, bottom, _, predicted = composition_case()
    interior = [0, 1, 5]
    args = (original[interior], generated[interior], top[interior], bottom[interior])
    centre = (top[interior] + bottom[interior]) // 2
    composed = compose_height_adaptive(*args, centre, predicted[interior])
    assert torch.equal(composed, reference_slicing_compose(*args, predicted[interior]))


def test_composition_is_differentiable_in_generated_pixels():
    original, generated, top, bottom, centre, predicted = composition_case()
    generated.requires_grad_(True)
    predicted.requires_grad_(True)
    compose_height_adaptive(original, generated, top, bottom, centre, predicted, 20).sum().backward()
    rows = generated_height_rows(top, bottom, predicted, 20)
    start = top - torch.div(rows - (bottom - top), 2, rounding_mode="floor")
    inside = (torch.minimum(start + rows, torch.tensor(64)) - start.clamp_min(0))
    assert inside.tolist() == [14, 18, 17, 16, 20, 11]  # the border bands lose the rows outside the image
    # each output row taken from the generator passes gradient 1 to one generated pixel per column/channel
    assert torch.equal(generated.grad.sum(dim=(1, 2, 3)), (inside * 2 * 5).float())
    assert predicted.grad is None


def test_generated_height_rows_rule():
    top, bottom = torch.tensor([10, 10, 10]), torch.tensor([30, 30, 30])
    rows = generated_height_rows(top, bottom, torch.tensor([15.0, 25.2, 60.0]), mask_height_px=40)
    assert rows.tolist() == [20, 26, 40]
