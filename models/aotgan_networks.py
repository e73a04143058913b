"""AOT-GAN networks (Zeng et al., "Aggregated Contextual Transformations for High-Resolution Image
Inpainting", IEEE TVCG 2022), written for single-channel CT slices, plus the SM-PatchGAN targets.

Generator: a 7x7 convolution and two stride-2 4x4 convolutions (encoder, 1/4 resolution), a stack
of AOT blocks, two bilinear x2 up-convolutions (decoder) and two 3x3 heads: the CT (tanh, [-1, 1])
and, beyond the original, the target segmentation (sigmoid) that RHLV needs. Inputs: masked CT and
band mask (B,1,H,W); no slice offset, no attention (no HGAM), no height head (no SHRM).

AOT block: parallel 3x3 branches with dilation rates r_i (each ``channels / len(rates)`` wide),
concatenated and fused by a 3x3 convolution, then spatially gated against the block input x:

    g = sigmoid(5 * (2 * (G(x) - mean) / (std + 1e-9) - 1))     (mean, std per channel over H, W)
    y = x * (1 - g) + fused * g

so g -> 0 leaves the block an identity and g -> 1 replaces x by the aggregated context.

Discriminator (SM-PatchGAN): spectral-normalised 4x4 convolutions (strides 2, 2, 2, 1, 1) giving a
per-patch score map, trained by least squares against *soft* mask targets: real pixels 1, the
composed fake image 1 - Gaussian-blurred band (``sm_patchgan_targets``); the score map is resized
bilinearly to the image. This follows the paper's equations (the public code labels fakes with the
blurred mask itself, which contradicts its real label of 1; we use the paper's form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

GATE_EPS = 1e-9
GATE_SCALE = 5.0
BLUR_TRUNCATE = 3.5  # kernel radius in sigmas: sigma 10 px gives the paper's 71 x 71 kernel


@dataclass
class AOTOutput:
    """What the AOT-GAN generator predicts, under the names the synthesis reads (``GeneratorOutput``).

    fine_ct: (B,1,H,W) CT in [-1, 1]; fine_target_seg: (B,1,H,W) target probability;
    fine_height: (B,) generated height in rows = the band height M (no SHRM).
    """

    fine_ct: torch.Tensor
    fine_target_seg: torch.Tensor
    fine_height: torch.Tensor


def gate_normalisation(features: torch.Tensor) -> torch.Tensor:
    """AOT gate pre-activation: 5 * (2 * (f - mean) / (std + 1e-9) - 1), mean and (unbiased) std of
    each (B, C) map over its H x W pixels; (B,C,H,W) in and out."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = features.std(dim=(2, 3), keepdim=True) + GATE_EPS
    return GATE_SCALE * (2.0 * (features - mean) / std - 1.0)


def gated_residual(x: torch.Tensor, fused: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x * (1 - gate) + fused * gate (gate in [0, 1], broadcastable)."""
    return x * (1.0 - gate) + fused * gate


class AOTBlock(nn.Module):
    """Aggregated contextual transformation: dilated 3x3 branches, fused, gated against the input.

    (B, channels, H, W) in and out; ``channels`` must be divisible by ``len(rates)``; H and W must
    exceed the largest rate (reflection padding).
    """

    def __init__(self, channels: int, rates: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        if not rates or channels % len(rates):
            raise ValueError(f"AOT block: {channels} channels cannot be split into {len(rates)} branches")
        branch = channels // len(rates)
        self.rates = tuple(int(rate) for rate in rates)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.ReflectionPad2d(rate), nn.Conv2d(channels, branch, 3, dilation=rate), nn.ReLU(True))
            for rate in self.rates)
        self.fuse = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(branch * len(self.rates), channels, 3))
        self.gate = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        gate = torch.sigmoid(gate_normalisation(self.gate(x)))
        return gated_residual(x, fused, gate)


class UpConv(nn.Module):
    """Bilinear upsampling (align_corners) to ``size`` followed by a 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class AOTGenerator(nn.Module):
    """AOT-GAN generator on (masked CT, band mask); returns (CT in [-1, 1], target probability), each (B,1,H,W).

    ngf: width of the first layer (the bottleneck has 4 * ngf channels; the paper uses 64);
    blocks: number of AOT blocks (paper 8); rates: dilation rates of each block (paper 1, 2, 4, 8).
    """

    def __init__(self, ngf: int = 64, blocks: int = 8, rates: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(2, ngf, 7), nn.ReLU(True),
            nn.Conv2d(ngf, 2 * ngf, 4, stride=2, padding=1), nn.ReLU(True),
            nn.Conv2d(2 * ngf, 4 * ngf, 4, stride=2, padding=1), nn.ReLU(True))
        self.middle = nn.Sequential(*[AOTBlock(4 * ngf, rates) for _ in range(blocks)])
        self.up1 = UpConv(4 * ngf, 2 * ngf)
        self.up2 = UpConv(2 * ngf, ngf)
        self.ct_head = nn.Conv2d(ngf, 1, 3, padding=1)
        self.seg_head = nn.Conv2d(ngf, 1, 3, padding=1)

    def forward(self, masked_ct: torch.Tensor, band_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = masked_ct.shape[-2:]
        encoded = self.encoder(torch.cat([masked_ct, band_mask], dim=1))
        largest_rate = max((max(block.rates) for block in self.middle), default=0)
        if min(encoded.shape[-2:]) <= largest_rate:
            raise ValueError(f"AOT-GAN: {height}x{width} slices give {tuple(encoded.shape[-2:])} features at 1/4 "
                             f"resolution, too small for dilation rate {largest_rate}; lower --aot_rates")
        features = self.middle(encoded)
        features = F.relu(self.up1(features, (math.ceil(height / 2), math.ceil(width / 2))))
        features = F.relu(self.up2(features, (height, width)))
        return torch.tanh(self.ct_head(features)), torch.sigmoid(self.seg_head(features))


class AOTSynthesisGenerator(AOTGenerator):
    """The AOT generator behind the synthesis interface (``models.synthesis.runner.Generator``):
    ``(masked_ct, offset_plane, band_mask, cam, mask_height_px) -> AOTOutput``, same weights as
    :class:`AOTGenerator`. The slice offset and the attention map are ignored (AOT-GAN has neither);
    the generated height is the band height."""

    def forward(self, masked_ct: torch.Tensor, offset_plane: torch.Tensor, band_mask: torch.Tensor,  # type: ignore[override]
                cam: torch.Tensor, mask_height_px: float | torch.Tensor) -> AOTOutput:
        ct, seg = super().forward(masked_ct, band_mask)
        height = torch.as_tensor(mask_height_px, dtype=torch.float32, device=masked_ct.device)
        return AOTOutput(ct, seg, height.expand(masked_ct.shape[0]).clone() if height.dim() == 0 else height)


class SMPatchDiscriminator(nn.Module):
    """SM-PatchGAN discriminator: spectral-normalised convolutions, (B,1,H,W) image -> (B,1,h,w) scores."""

    def __init__(self, input_nc: int = 1, ndf: int = 64) -> None:
        super().__init__()
        widths = (ndf, 2 * ndf, 4 * ndf, 8 * ndf)
        layers: list[nn.Module] = []
        previous = input_nc
        for width, stride in zip(widths, (2, 2, 2, 1)):
            layers += [spectral_norm(nn.Conv2d(previous, width, 4, stride=stride, padding=1, bias=False)),
                       nn.LeakyReLU(0.2, inplace=True)]
            previous = width
        layers.append(nn.Conv2d(previous, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def gaussian_kernel_1d(sigma_px: float, truncate: float = BLUR_TRUNCATE) -> torch.Tensor:
    """Normalised 1D Gaussian of standard deviation ``sigma_px`` pixels, radius int(truncate * sigma + 0.5)."""
    radius = int(truncate * sigma_px + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) ``image`` with edge-replicating borders (any image size)."""
    kernel = gaussian_kernel_1d(sigma_px).to(image.device, image.dtype)
    radius = kernel.numel() // 2
    channels = image.shape[1]
    rows = F.pad(image, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    columns = F.pad(out, (radius, radius, 0, 0), mode="replicate")
    return F.conv2d(columns, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def sm_patchgan_targets(generated_mask: torch.Tensor, sigma_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft SM-PatchGAN targets for a composed image: (fake target, real target), each like ``generated_mask``.

    generated_mask: (B,1,H,W), 1 where the composed image holds generated pixels. The fake target
    is 1 - blur(mask) (1 far from the band, towards 0 deep inside it); real images are 1 everywhere.
    """
    mask = generated_mask.detach().float()
    return 1.0 - gaussian_blur(mask, sigma_px), torch.ones_like(mask)


def patch_scores_at(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Discriminator score map resized (bilinear, align_corners) to the image size (B,1,H,W)."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=True)


# VGG19 layers (torchvision ``features`` indices) of AOT-GAN's perceptual (relu k_1) and style losses.
PERCEPTUAL_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
STYLE_LAYERS = {"relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_2": 31}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """Frozen VGG19 activations of a CT slice in [-1, 1] (grey -> RGB, ImageNet normalisation).

    Built from a local torchvision ``vgg19`` state dict (keys ``features.<i>.weight``, or the
    ``features`` module's own keys); nothing is downloaded.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from torchvision.models import vgg19

        last = max(max(PERCEPTUAL_LAYERS.values()), max(STYLE_LAYERS.values()))
        features = vgg19(weights=None).features
        own = {key.removeprefix("features."): value for key, value in state_dict.items()
               if key.startswith("features.") or key[0].isdigit()}
        features.load_state_dict(own)
        self.features = features[:last + 1].eval()
        for param in self.features.parameters():
            param.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """Activations at the perceptual and style layers, keyed by ``features`` index."""
        wanted = set(PERCEPTUAL_LAYERS.values()) | set(STYLE_LAYERS.values())
        x = ((image.float() + 1.0) / 2.0).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        out: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                out[index] = x
        return out


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B,C,C) Gram matrix of (B,C,H,W) features divided by C * H * W (AOT-GAN's normalisation)."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def perceptual_and_style_losses(vgg: VGG19Features, fake: torch.Tensor, real: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(perceptual, style): sums over layers of the mean L1 between activations (relu k_1) and between
    Gram matrices (relu2_2, relu3_4, relu4_4, relu5_2) of ``fake`` and ``real`` (B,1,H,W) in [-1, 1]."""
    fake_features, real_features = vgg(fake), vgg(real.detach())
    perceptual = sum(F.l1_loss(fake_features[i], real_features[i]) for i in PERCEPTUAL_LAYERS.values())
    style = sum(F.l1_loss(gram_matrix(fake_features[i]), gram_matrix(real_features[i])) for i in STYLE_LAYERS.values())
    return perceptual, style
