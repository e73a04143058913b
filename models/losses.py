"""Losses of HealthiVert-GAN (docs/design.md, 'Discriminators and losses'): GAN objectives, gradient penalty, Sobel
edges (EEM),
Dice, band-normalised L1 and the relative height error (SHRM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_MODES = ("vanilla", "lsgan", "wgangp")


class GANLoss(nn.Module):
    """pix2pix GAN objective on discriminator logits: vanilla (BCE), lsgan (MSE) or wgangp (mean score)."""

    def __init__(self, gan_mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {gan_mode!r} ({' | '.join(GAN_MODES)})")
        self.gan_mode = gan_mode
        self.real_label = real_label
        self.fake_label = fake_label

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """Loss for ``prediction`` (any shape of logits) judged as real or fake."""
        if self.gan_mode == "wgangp":
            return -prediction.mean() if target_is_real else prediction.mean()
        target = torch.full_like(prediction, self.real_label if target_is_real else self.fake_label)
        if self.gan_mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)


def gradient_penalty(net_d: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP penalty ``weight * E[(||grad D(x_hat)||_2 - 1)^2]`` on random real/fake mixtures (float32)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real.detach().float() + (1 - alpha) * fake.detach().float()).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        score = net_d(mixed)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return weight * (((grad.flatten(1) + 1e-16).norm(2, dim=1) - 1.0) ** 2).mean()  # eps: finite at 0


class SobelEdges(nn.Module):
    """Edge-enhancing module (EEM): Sobel gradient magnitude, replicate padding, clipped to [0, 1].

    Input and output (B,1,H,W). Differentiable (a soft mask gives the generator a gradient); the
    magnitude is 0 where gx^2 + gy^2 <= 1e-12, which keeps the gradient of the square root finite.
    """

    def __init__(self) -> None:
        super().__init__()
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        gy = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
        self.register_buffer("kernels", torch.stack([gx, gy]).unsqueeze(1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        grads = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), self.kernels.to(image.dtype))
        squared = grads.pow(2).sum(dim=1, keepdim=True)
        magnitude = torch.where(squared > 1e-12, squared.clamp_min(1e-12).sqrt(), torch.zeros_like(squared))
        return magnitude.clamp_max(1.0)


def dice_coefficient(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice (2|P.G| + eps) / (|P| + |G| + eps) per sample, averaged over the batch."""
    pred = prediction.flatten(1).float()
    truth = target.flatten(1).float()
    overlap = (pred * truth).sum(dim=1)
    return ((2 * overlap + eps) / (pred.sum(dim=1) + truth.sum(dim=1) + eps)).mean()


def band_l1(predictions: list[torch.Tensor], target: torch.Tensor, band_mask: torch.Tensor) -> torch.Tensor:
    """Sum over ``predictions`` of the summed absolute error against ``target``, divided by the band area.

    Equals the reference's ``mean L1 * H*W / band pixels`` at batch 1 (without its extra 1/B at batch B).
    """
    band_area = band_mask.detach().float().sum().clamp_min(1.0)
    return sum((p.float() - target.float()).abs().sum() for p in predictions) / band_area


def relative_height_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|h_pred - h| / h per sample (B,), heights in pixels; h clamped to >= 1."""
    target = target.float()
    return (predicted.float() - target).abs() / target.clamp_min(1.0)
