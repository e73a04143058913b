"""The generator's memory layout: channels-last strides for the fine stage's one-channel inputs change no value."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from models.networks import HealthiVertGenerator
from models.synthetic import synthetic_batch


def test_fine_stage_inputs_are_restrided_not_changed():
    """The generator's fine outputs equal the fine stage run on plain contiguous copies of the coarse outputs;
    its first concatenation is channels-last (no extra copy per convolution)."""
    torch.manual_seed(0)
    generator = HealthiVertGenerator(ngf=4, mask_height_px=8.0).eval().to(memory_format=torch.channels_last)
    b = synthetic_batch(2, 32)
    inputs = (b["masked_ct"], b["offset_plane"], b["band_mask"], b["cam"])
    seen = []
    hook = generator.fine.conv_branch[0].register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    with torch.inference_mode(), parametrize.cached():
        out = generator(*inputs, 8.0)
        hook.remove()
        scale = torch.full((2,), 8.0)
        fine_ct, fine_seg, fine_height, _ = generator.fine(
            b["masked_ct"], out.coarse_neighbour_seg.contiguous(), b["band_mask"], b["offset_plane"],
            out.coarse_ct.contiguous(), scale)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.fine_ct, fine_ct, atol=1e-6, rtol=0)
    assert torch.allclose(out.fine_target_seg, fine_seg, atol=1e-6, rtol=0)
    assert torch.allclose(out.fine_height, fine_height, atol=1e-5, rtol=0)
