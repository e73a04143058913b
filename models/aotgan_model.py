"""AOT-GAN training model (``train.py --model aotgan``): the paper's inpainting baseline in this pipeline.

It sees the same masked slice as HealthiVert-GAN (``data/aligned_dataset.py``: the target cut out,
the neighbours abutting a fixed ``--mask_height`` mm band) but has no height head (SHRM) and no
attention input (HGAM): the generated height is the band height M. The composition is the one of
HealthiVert-GAN (``models.composition``) with H = M, so the composed slice keeps the context of the
masked input and takes the M band rows from the generator. Its ground truth is the real slice in
the same layout (the real slice composed into itself with H = M: context rows shifted as in the
input, the real rows around the target in the band), for the CT and the target label.

One step: one SM-PatchGAN update, then one generator update with

    loss_G = lambda_L1 * mean |G(x) - real|                      (AOT-GAN's reconstruction term)
           + lambda_adv * mean((D(composed) - 1)^2 * m) / mean(m)   (m: generated rows)
           + lambda_dice_fine * (1 - Dice(target seg, target label))
           + lambda_perceptual * perceptual + lambda_style * style  (only with --vgg19_weights)

and the discriminator trained by least squares towards 1 on real slices and 1 - blur(m) on
composed ones (``models.aotgan_networks.sm_patchgan_targets``). The target-segmentation head and
its Dice term are ours (AOT-GAN paints images only): RHLV needs the synthesized vertebra's label.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data.masking import MaskingSettings, add_mask_height_option
from models.amp import add_amp_options
from models.aotgan_networks import (
    AOTGenerator,
    AOTOutput,
    AOTSynthesisGenerator,
    SMPatchDiscriminator,
    VGG19Features,
    patch_scores_at,
    perceptual_and_style_losses,
    sm_patchgan_targets,
)
from models.base_model import BaseModel
from models.compilation import add_compile_option
from models.composition import compose_height_adaptive
from models.healthivert_model import HealthiVertModel, HealthiVertSettings, add_init_options
from models.losses import dice_coefficient
from models.networks import init_weights
from util.cli import add_option
from util.distributed import launch_environment
from util.fileio import read_torch_file
from util.settings import FromOptions


def load_vgg19(path: str | None, device: torch.device) -> VGG19Features | None:
    """VGG19 features from a local weights file, or ``None`` (saying so in one log line on rank 0) when
    the file is not given or absent."""
    reason = "no --vgg19_weights given" if not path else None if Path(path).is_file() else f"{path} not found"
    if reason is not None:
        if launch_environment().rank == 0:
            print(f"AOT-GAN: perceptual and style losses off ({reason}; VGG19 weights are never downloaded)")
        return None
    state = read_torch_file(path, map_location="cpu")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        return VGG19Features(state).to(device)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{path}: not a torchvision VGG19 state dict ({str(err).splitlines()[0]})") from None


@dataclass(frozen=True)
class AOTGANSettings(FromOptions):
    """Networks and loss weights of the AOT-GAN baseline (defaults: the AOT-GAN paper's sizes and weights).

    ngf: generator width of the first layer; aot_blocks / aot_rates: AOT blocks and their branch dilations;
    ndf, init_type, init_gain: as the HealthiVert model's; lambda_*: loss weights; vgg19_weights: a local
    VGG19 state dict (``None``: no perceptual and style terms); sm_sigma: blur (pixels) of the soft
    SM-PatchGAN targets; mask_height_mm: the band height (= the generated height).
    """

    ngf: int = 64
    aot_blocks: int = 8
    aot_rates: tuple[int, ...] = (1, 2, 4, 8)
    mask_height_mm: float = field(default=MaskingSettings.mask_height_mm, metadata={"option": "mask_height"})
    ndf: int = HealthiVertSettings.ndf
    init_type: str = HealthiVertSettings.init_type
    init_gain: float = HealthiVertSettings.init_gain
    lambda_L1: float = 1.0
    lambda_adv: float = 0.01
    lambda_dice_fine: float = HealthiVertSettings.lambda_dice_fine
    lambda_perceptual: float = 0.1
    lambda_style: float = 250.0
    vgg19_weights: str | None = None
    sm_sigma: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "aot_rates", tuple(int(rate) for rate in self.aot_rates))


class AOTGANModel(BaseModel):
    """AOT-GAN generator with a target-segmentation head and an SM-PatchGAN discriminator."""

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool = True) -> argparse.ArgumentParser:
        """Model flags (defaults: the AOT-GAN paper's sizes and weights); existing flags are kept."""
        defaults = AOTGANSettings()
        add_option(parser, "--ngf", type=int, default=defaults.ngf,
                   help="generator width of the first layer (bottleneck 4x)")
        add_option(parser, "--aot_blocks", type=int, default=defaults.aot_blocks, help="number of AOT blocks")
        add_option(parser, "--aot_rates", type=int, nargs="+", default=list(defaults.aot_rates),
                   help="dilation rates of the parallel branches of each AOT block")
        add_mask_height_option(parser)
        add_amp_options(parser)
        add_compile_option(parser)
        if is_train:
            add_init_options(parser, "weight")
            add_option(parser, "--lambda_L1", type=float, default=defaults.lambda_L1,
                       help="weight of the mean L1 of the generator output against the real slice")
            add_option(parser, "--lambda_adv", type=float, default=defaults.lambda_adv,
                       help="weight of the SM-PatchGAN term")
            add_option(parser, "--lambda_dice_fine", type=float, default=defaults.lambda_dice_fine,
                       help="weight of the Dice loss of the target segmentation head")
            add_option(parser, "--lambda_perceptual", type=float, default=defaults.lambda_perceptual,
                       help="weight of the VGG19 perceptual loss (with --vgg19_weights)")
            add_option(parser, "--lambda_style", type=float, default=defaults.lambda_style,
                       help="weight of the VGG19 style loss (with --vgg19_weights)")
            add_option(parser, "--vgg19_weights", type=str, default=defaults.vgg19_weights,
                       help="local torchvision VGG19 state dict for the perceptual and style losses "
                            "(never downloaded; without it both losses are off)")
            add_option(parser, "--sm_sigma", type=float, default=defaults.sm_sigma,
                       help="Gaussian sigma (pixels) of the soft SM-PatchGAN mask targets "
                            "(10: the paper's 71x71 kernel)")
        return parser

    @staticmethod
    def inference_generator(options: dict[str, Any]) -> nn.Module:
        """The generator of a checkpoint saved with ``options``, with the synthesis call signature."""
        settings = AOTGANSettings.from_options(options)
        return AOTSynthesisGenerator(settings.ngf, settings.aot_blocks, settings.aot_rates)

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.settings = settings = AOTGANSettings.from_options(opt)
        self.model_names = ["G", "D"] if self.isTrain else ["G"]
        self.loss_names = ["G_L1", "G_adv", "G_Dice", "G", "D_real", "D_fake"]
        self.visual_names = ["masked_ct", "real_ct", "fake_ct", "generated_ct", "fine_target_seg", "target_label",
                             "band_mask", "generated_mask"]
        self.netG = AOTGenerator(settings.ngf, settings.aot_blocks, settings.aot_rates)
        init_weights(self.netG, settings.init_type, settings.init_gain)
        self.netG.to(self.device)
        self.vgg: VGG19Features | None = None
        if not self.isTrain:
            return
        self.netD = SMPatchDiscriminator(1, settings.ndf)
        init_weights(self.netD, settings.init_type, settings.init_gain)
        self.netD.to(self.device)
        self.vgg = load_vgg19(settings.vgg19_weights, self.device)
        if self.vgg is not None:
            self.loss_names[3:3] = ["perceptual", "style"]
        self.add_adam_optimizers()

    # ------------------------------------------------------------------ input / forward
    def set_input(self, batch: dict[str, Any]) -> None:
        """The HealthiVert batch contract (``HealthiVertModel.set_input``); then ``real_ct`` and
        ``target_label`` become the real slice in the band layout (H = M), ``generated_mask`` the rows
        the composition takes from the generator."""
        HealthiVertModel.set_input(self, batch)  # type: ignore[arg-type]
        self.real_ct_original = self.real_ct
        self.real_ct = self.compose(self.real_ct_original, self.real_ct_original)
        self.target_label = self.compose(self.target_label, self.target_label)
        self.generated_mask = self.compose(torch.zeros_like(self.band_mask), torch.ones_like(self.band_mask))

    def compose(self, original: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """Composition of ``generated`` into ``original`` with the generated height fixed to the band height."""
        height = self.mask_height_px.long()
        return compose_height_adaptive(original, generated, self.target_top, self.target_bottom, self.band_centre,
                                       height.float(), height)

    def forward(self) -> None:
        """Generator forward and composition with the real slice (autocast with --amp)."""
        with self.precision.autocast():
            generated_ct, generated_seg = self.netG(self.masked_ct, self.band_mask)
        self.generated_ct, self.generated_seg = generated_ct.float(), generated_seg.float()
        self.fake_ct = self.compose(self.real_ct_original, self.generated_ct)
        self.fine_target_seg = self.compose(torch.zeros_like(self.generated_seg), self.generated_seg)
        self.output = AOTOutput(self.generated_ct, self.fine_target_seg, self.mask_height_px)

    # ------------------------------------------------------------------ losses
    def discriminator_loss(self) -> torch.Tensor:
        """Least squares of D towards 1 on real slices and 1 - blur(m) on composed ones."""
        fake_target, real_target = sm_patchgan_targets(self.generated_mask, self.settings.sm_sigma)
        size = tuple(self.real_ct.shape[-2:])
        with self.precision.autocast():
            fake_scores = patch_scores_at(self.netD(self.fake_ct.detach()), size)
            real_scores = patch_scores_at(self.netD(self.real_ct), size)
        self.loss_D_fake = F.mse_loss(fake_scores.float(), fake_target).detach()
        self.loss_D_real = F.mse_loss(real_scores.float(), real_target).detach()
        return F.mse_loss(fake_scores.float(), fake_target) + F.mse_loss(real_scores.float(), real_target)

    def generator_loss_terms(self) -> dict[str, torch.Tensor]:
        """Every weighted term of the generator loss (call after ``forward``)."""
        weights = self.settings
        size = tuple(self.real_ct.shape[-2:])
        with self.precision.autocast():
            scores = patch_scores_at(self.netD(self.fake_ct), size).float()
        mask = self.generated_mask
        adversarial = ((scores - 1.0) ** 2 * mask).mean() / mask.mean().clamp_min(1e-8)
        terms = {
            "G_L1": weights.lambda_L1 * F.l1_loss(self.generated_ct, self.real_ct),
            "G_adv": weights.lambda_adv * adversarial,
            "G_Dice": weights.lambda_dice_fine * (1 - dice_coefficient(self.fine_target_seg, self.target_label)),
        }
        if self.vgg is not None:
            perceptual, style = perceptual_and_style_losses(self.vgg, self.fake_ct, self.real_ct)
            terms["perceptual"] = weights.lambda_perceptual * perceptual
            terms["style"] = weights.lambda_style * style
        return terms

    def generator_loss(self) -> torch.Tensor:
        """Total generator loss; records each term as ``loss_<name>``."""
        terms = self.generator_loss_terms()
        for name, value in terms.items():
            setattr(self, "loss_" + name, value.detach())
        total = torch.stack(list(terms.values())).sum()
        self.loss_G = total.detach()
        return total

    # ------------------------------------------------------------------ optimisation
    def optimize_parameters(self) -> None:
        """Forward, one discriminator step, then one generator step."""
        self.forward()
        self.set_requires_grad(self.netD, True)
        self.optimizer_D.zero_grad(set_to_none=True)
        self.optimizer_step("D", self.discriminator_loss())
        self.set_requires_grad(self.netD, False)
        self.optimizer_G.zero_grad(set_to_none=True)
        self.optimizer_step("G", self.generator_loss())

    def get_current_visuals(self) -> OrderedDict[str, torch.Tensor]:
        """Display images in [-1, 1] (CT as is; masks m -> 2m - 1)."""
        ct_like = {"masked_ct", "real_ct", "fake_ct", "generated_ct"}
        visuals: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name in self.visual_names:
            if hasattr(self, name):
                image = getattr(self, name).detach().float()
                visuals[name] = image if name in ct_like else image * 2.0 - 1.0
        return visuals
