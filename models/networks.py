"""HealthiVert-GAN networks: the two-stage generator (docs/design.md, 'Generator') and the PatchGAN discriminator.

Generator (DeepFill-v1 style, spectrally normalised conv + ELU, as the reference):
- coarse stage: (masked CT, offset plane r, band mask) -> coarse CT, sigmoid segmentation of
  the neighbouring vertebrae, height h1 (SHRM head); (1 - CAM) is concatenated in the decoder at
  1/2 and full resolution (HGAM);
- fine stage: (masked CT, coarse segmentation, band mask, r) -> a dilated-conv branch and a
  contextual-attention branch, merged and decoded; the last layer also sees the coarse CT ->
  fine CT, sigmoid segmentation of the target vertebra, height h2.
CT heads are a plain convolution clamped to [-1, 1] (``clamp_ct``), as the reference: weights trained
with the published code need the clamp (a tanh would change outputs by up to 0.25 near +-1).
Heights are ``mask_height_px * sigmoid(fc(global_avg_pool(features)))`` in pixels (rows).
All image tensors are (B, C, H, W) with H, W divisible by 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.contextual_attention import ContextualAttention


@dataclass
class GeneratorOutput:
    """Everything the generator predicts; images (B,1,H,W), heights (B,) in pixels (rows).

    coarse_ct, fine_ct: CT in [-1, 1] (convolution clamped to [-1, 1]). coarse_neighbour_seg: sigmoid mask of the
    healthy neighbours. fine_target_seg: sigmoid mask of the target vertebra. attention_flow: (B,2,H,W)
    (row, column) displacement in pixels from each position to the background patch it attends to most.
    """

    coarse_ct: torch.Tensor
    coarse_neighbour_seg: torch.Tensor
    coarse_height: torch.Tensor
    fine_ct: torch.Tensor
    fine_target_seg: torch.Tensor
    fine_height: torch.Tensor
    attention_flow: torch.Tensor


class _ELUFunction(torch.autograd.Function):
    """ELU (alpha 1) as max(x, exp(min(x, 0)) - 1), backward from the saved output as ``F.elu(inplace=True)``.

    Faster than PyTorch's CPU kernel for bfloat16 on an AVX2 CPU (10-20 % less process time, see
    benchmarks/README.md); for float32 the in-place kernel is faster there, and ``ELU`` uses it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        negative_part = x.clamp(max=0).exp_().sub_(1.0)
        out = torch.maximum(x, negative_part, out=negative_part)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad_output, 1.0, 1, 1, True, out)


class ELU(nn.Module):
    """ELU(alpha=1): :class:`_ELUFunction` for reduced-precision tensors on the CPU, else the in-place kernel
    (the faster of the two for each case on the CPU, measured in benchmarks/README.md). In place unless ``x`` is
    a leaf (a caller's tensor), which is left unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            return _ELUFunction.apply(x)
        return F.elu(x, inplace=not x.is_leaf)


class GenConv(nn.Sequential):
    """Spectrally normalised zero-padded 'same' conv followed by an activation (elu|relu|none)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, activation: str = "elu") -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                                           padding=padding, dilation=dilation))]
        if activation == "elu":
            layers.append(ELU())
        elif activation == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif activation != "none":
            raise ValueError(f"GenConv: unknown activation {activation!r}")
        super().__init__(*layers)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` if the 4-D tensor is stored channels-last, else the default format."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def as_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` stored in ``memory_format``. A one-channel tensor gets explicit channels-last strides
    (B,1,H,W) -> (H*W, 1, W, 1) (same memory), so that ``torch.cat`` with channels-last feature maps
    stays channels-last instead of silently falling back to a contiguous copy."""
    if memory_format != torch.channels_last:
        return x.contiguous(memory_format=memory_format)
    if x.shape[1] == 1:
        x = x.contiguous()
        return x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))
    return x.contiguous(memory_format=torch.channels_last)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling by 2 (B,C,H,W) -> (B,C,2H,2W)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour downsampling by an integer factor (keeps rows/cols 0, f, 2f, ...)."""
    return x[:, :, ::factor, ::factor]


class HeightHead(nn.Module):
    """SHRM height regressor: ``scale * sigmoid(fc(global_avg_pool(x)))`` -> (B,)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        pooled = x.float().mean(dim=(2, 3))
        return torch.sigmoid(self.fc(pooled)).squeeze(1) * scale


def clamp_ct(x: torch.Tensor) -> torch.Tensor:
    """CT head activation: ``clamp(x, -1, 1)`` (the reference's; zero gradient where the head saturates)."""
    return torch.clamp(x, -1.0, 1.0)


def dilated_stack(channels: int) -> nn.Sequential:
    """Four 3x3 convs with dilation 2, 4, 8, 16 (DeepFill's atrous block)."""
    return nn.Sequential(*[GenConv(channels, channels, 3, dilation=d) for d in (2, 4, 8, 16)])


class CoarseGenerator(nn.Module):
    """Coarse stage: 3 input planes (masked CT, offset r, band mask) + (1 - CAM) in the decoder."""

    def __init__(self, ngf: int = 16) -> None:
        super().__init__()
        c = ngf
        self.encoder = nn.Sequential(
            GenConv(3, c, 5), GenConv(c, 2 * c, 3, 2), GenConv(2 * c, 2 * c), GenConv(2 * c, 4 * c, 3, 2),
            GenConv(4 * c, 4 * c), GenConv(4 * c, 4 * c), dilated_stack(4 * c))
        self.height_head = HeightHead(4 * c)
        self.bottleneck = nn.Sequential(GenConv(4 * c, 4 * c), GenConv(4 * c, 4 * c))
        self.half_res = nn.Sequential(GenConv(4 * c + 1, 4 * c), GenConv(4 * c, 2 * c), GenConv(2 * c, 2 * c))
        self.full_res = nn.Sequential(GenConv(2 * c + 1, 2 * c), GenConv(2 * c, c), GenConv(c, c // 2))
        self.ct_head = GenConv(c // 2, 1, activation="none")
        self.seg_head = GenConv(c // 2, 1, activation="none")

    def forward(self, masked_ct: torch.Tensor, offset_plane: torch.Tensor, band_mask: torch.Tensor,
                inverse_cam: torch.Tensor, mask_height_px: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns coarse CT (clamped to [-1, 1]), neighbour segmentation (sigmoid), height (B,) in pixels."""
        x = self.encoder(torch.cat([masked_ct, offset_plane, band_mask], dim=1))
        height = self.height_head(x, mask_height_px)
        x = upsample2(self.bottleneck(x))
        half_cam = as_memory_format(downsample_nearest(inverse_cam, 2), memory_format_of(x))
        x = self.half_res(torch.cat([x, half_cam], dim=1))
        x = self.full_res(torch.cat([upsample2(x), inverse_cam], dim=1))
        return clamp_ct(self.ct_head(x)), torch.sigmoid(self.seg_head(x)), height


class FineGenerator(nn.Module):
    """Fine stage: 4 input planes (masked CT, coarse seg, band mask, r); dilated and attention branches."""

    def __init__(self, ngf: int = 16) -> None:
        super().__init__()
        c = ngf
        self.conv_branch = nn.Sequential(
            GenConv(4, c, 5), GenConv(c, c, 3, 2), GenConv(c, 2 * c), GenConv(2 * c, 2 * c, 3, 2),
            GenConv(2 * c, 4 * c), GenConv(4 * c, 4 * c), dilated_stack(4 * c))
        self.attention_encoder = nn.Sequential(
            GenConv(4, c, 5), GenConv(c, c, 3, 2), GenConv(c, 2 * c), GenConv(2 * c, 4 * c, 3, 2),
            GenConv(4 * c, 4 * c), GenConv(4 * c, 4 * c, activation="relu"))
        self.contextual_attention = ContextualAttention(ksize=3, rate=2, softmax_scale=10.0, fuse=True)
        self.attention_decoder = nn.Sequential(GenConv(4 * c, 4 * c), GenConv(4 * c, 4 * c))
        self.merge = GenConv(8 * c, 4 * c)
        self.height_head = HeightHead(4 * c)
        self.quarter_res = nn.Sequential(GenConv(4 * c, 4 * c), GenConv(4 * c, 4 * c))
        self.half_res = nn.Sequential(GenConv(4 * c, 2 * c), GenConv(2 * c, 2 * c))
        self.full_res = nn.Sequential(GenConv(2 * c, c), GenConv(c, c // 2))
        self.ct_head = GenConv(c // 2 + 1, 1, activation="none")
        self.seg_head = GenConv(c // 2 + 1, 1, activation="none")

    def forward(self, masked_ct: torch.Tensor, coarse_seg: torch.Tensor, band_mask: torch.Tensor,
                offset_plane: torch.Tensor, coarse_ct: torch.Tensor, mask_height_px: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns fine CT (clamped to [-1, 1]), target segmentation (sigmoid), height (B,), attention offsets."""
        planes = torch.cat([masked_ct, coarse_seg, band_mask, offset_plane], dim=1)
        hallucinated = self.conv_branch(planes)
        attended, offsets = self.contextual_attention(self.attention_encoder(planes), band_mask)
        attended = self.attention_decoder(as_memory_format(attended.to(hallucinated.dtype),
                                                           memory_format_of(hallucinated)))
        x = self.merge(torch.cat([hallucinated, attended], dim=1))
        height = self.height_head(x, mask_height_px)
        x = upsample2(self.quarter_res(x))
        x = upsample2(self.half_res(x))
        x = torch.cat([self.full_res(x), coarse_ct.to(x.dtype)], dim=1)
        return clamp_ct(self.ct_head(x)), torch.sigmoid(self.seg_head(x)), height, offsets


class HealthiVertGenerator(nn.Module):
    """Coarse-to-fine HealthiVert generator (docs/design.md, 'Generator').

    Args:
        ngf: base width (16 in the reference; ~0.99 M parameters).
        mask_height_px: height of the masked band in pixels; heights are predicted in (0, this).
            ``forward`` may override it per sample.
    """

    def __init__(self, ngf: int = 16, mask_height_px: float = 40.0) -> None:
        super().__init__()
        if ngf < 2 or ngf % 2:
            raise ValueError(f"HealthiVertGenerator: ngf must be an even number >= 2, got {ngf}")
        self.ngf = ngf
        self.mask_height_px = float(mask_height_px)
        self.coarse = CoarseGenerator(ngf)
        self.fine = FineGenerator(ngf)

    def forward(self, masked_ct: torch.Tensor, offset_plane: torch.Tensor, band_mask: torch.Tensor,
                cam: torch.Tensor, mask_height_px: torch.Tensor | float | None = None) -> GeneratorOutput:
        """Synthesize the band.

        Args:
            masked_ct: (B,1,H,W) CT in [-1,1] with the band set to -1 (``data.masking.BAND_FILL_VALUE``).
            offset_plane: (B,1,H,W) slice offset r from the vertebra centre (constant plane).
            band_mask: (B,1,H,W) 1 inside the band to synthesize.
            cam: (B,1,H,W) fracture attention map in [0,1]; the network is fed 1 - cam (HGAM).
            mask_height_px: band height in pixels, scalar or (B,); defaults to the constructor's.
        """
        batch, _, height, width = masked_ct.shape
        if height % 8 or width % 8:
            raise ValueError(f"HealthiVertGenerator: image size {height}x{width} must be divisible by 8")
        scale = torch.as_tensor(self.mask_height_px if mask_height_px is None else mask_height_px,
                                dtype=torch.float32, device=masked_ct.device).expand(batch)
        fmt = memory_format_of(self.coarse.encoder[0][0].parametrizations.weight.original)
        masked_ct, offset_plane, band_mask, inverse_cam = (
            as_memory_format(t, fmt) for t in (masked_ct, offset_plane, band_mask, 1.0 - cam))
        coarse_ct, coarse_seg, coarse_height = self.coarse(masked_ct, offset_plane, band_mask, inverse_cam, scale)
        # the one-channel coarse outputs get the inputs' strides, so the fine stage's concatenations stay
        # channels-last instead of being copied again by each convolution that reads them
        fine_ct, fine_seg, fine_height, offsets = self.fine(masked_ct, as_memory_format(coarse_seg, fmt), band_mask,
                                                            offset_plane, as_memory_format(coarse_ct, fmt), scale)
        flow_scale = height // offsets.shape[2]
        attention_flow = F.interpolate(offsets * flow_scale, size=(height, width), mode="nearest")
        return GeneratorOutput(coarse_ct=coarse_ct, coarse_neighbour_seg=coarse_seg, coarse_height=coarse_height,
                               fine_ct=fine_ct, fine_target_seg=fine_seg, fine_height=fine_height,
                               attention_flow=attention_flow)


class NLayerDiscriminator(nn.Module):
    """pix2pix PatchGAN (70x70 receptive field with n_layers=3); returns (B,1,h,w) logits."""

    def __init__(self, input_nc: int = 1, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        norm_layer = norm_layer_factory(norm)
        use_bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=use_bias), norm_layer(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def norm_layer_factory(norm: str):
    """Normalisation layer constructor for 'batch' | 'instance' | 'none'."""
    if norm == "batch":
        return lambda ch: nn.BatchNorm2d(ch, affine=True, track_running_stats=True)
    if norm == "instance":
        return lambda ch: nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)
    if norm == "none":
        return lambda ch: nn.Identity()
    raise ValueError(f"unknown normalisation {norm!r} (batch | instance | none)")


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """pix2pix weight initialisation of conv/linear layers (normal | xavier | kaiming | orthogonal)."""

    def init_func(m: nn.Module) -> None:
        name = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, init_gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=init_gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=init_gain)
            else:
                raise ValueError(f"unknown init_type {init_type!r}")
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in name:
            nn.init.normal_(m.weight, 1.0, init_gain)
            nn.init.constant_(m.bias, 0.0)

    return net.apply(init_func)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
