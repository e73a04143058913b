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
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
from models.composition import compose_height_adaptive
from models.healthivert_model import HealthiVertModel, add_option
from models.losses import dice_coefficient
from models.networks import init_weights
from util.fileio import read_torch_file


def load_vgg19(path: str | None, device: torch.device) -> VGG19Features | None:
    """VGG19 features from a local weights file, or ``None`` (saying so in one log line on rank 0) when
    the file is not given or absent."""
    reason = "no --vgg19_weights given" if not path else None if Path(path).is_file() else f"{path} not found"
    if reason is not None:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"AOT-GAN: perceptual and style losses off ({reason}; VGG19 weights are never downloaded)")
        return None
    state = read_torch_file(path, map_location="cpu")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        return VGG19Features(state).to(device)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{path}: not a torchvision VGG19 state dict ({str(err).splitlines()[0]})") from None


class AOTGANModel(BaseModel):
    """AOT-GAN generator with a target-segmentation head and an SM-PatchGAN discriminator."""

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool = True) -> argparse.ArgumentParser:
        """Model flags (defaults: the AOT-GAN paper's sizes and weights); existing flags are kept."""
        add_option(parser, "--ngf", type=int, default=64, help="generator width of the first layer (bottleneck 4x)")
        add_option(parser, "--aot_blocks", type=int, default=8, help="number of AOT blocks")
        add_option(parser, "--aot_rates", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="dilation rates of the parallel branches of each AOT block")
        add_option(parser, "--mask_height", type=float, default=40.0,
                   help="height of the masked band in mm (= the generated height: AOT-GAN has no SHRM)")
        add_amp_options(parser)
        if is_train:
            add_option(parser, "--ndf", type=int, default=64, help="discriminator width of the first conv layer")
            add_option(parser, "--init_type", type=str, default="normal",
                       choices=["normal", "xavier", "kaiming", "orthogonal"], help="weight initialisation")
            add_option(parser, "--init_gain", type=float, default=0.02, help="scale of the initialisation")
            add_option(parser, "--lambda_L1", type=float, default=1.0,
                       help="weight of the mean L1 of the generator output against the real slice")
            add_option(parser, "--lambda_adv", type=float, default=0.01, help="weight of the SM-PatchGAN term")
            add_option(parser, "--lambda_dice_fine", type=float, default=15.0,
                       help="weight of the Dice loss of the target segmentation head")
            add_option(parser, "--lambda_perceptual", type=float, default=0.1,
                       help="weight of the VGG19 perceptual loss (with --vgg19_weights)")
            add_option(parser, "--lambda_style", type=float, default=250.0,
                       help="weight of the VGG19 style loss (with --vgg19_weights)")
            add_option(parser, "--vgg19_weights", type=str, default=None,
                       help="local torchvision VGG19 state dict for the perceptual and style losses "
                            "(never downloaded; without it both losses are off)")
            add_option(parser, "--sm_sigma", type=float, default=10.0,
                       help="Gaussian sigma (pixels) of the soft SM-PatchGAN mask targets "
                            "(10: the paper's 71x71 kernel)")
        return parser

    @staticmethod
    def inference_generator(options: dict[str, Any]) -> nn.Module:
        """The generator of a checkpoint saved with ``options``, with the synthesis call signature."""
        return AOTSynthesisGenerator(int(options.get("ngf", 64)), int(options.get("aot_blocks", 8)),
                                     tuple(options.get("aot_rates", (1, 2, 4, 8))))

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.model_names = ["G", "D"] if self.isTrain else ["G"]
        self.loss_names = ["G_L1", "G_adv", "G_Dice", "G", "D_real", "D_fake"]
        self.visual_names = ["masked_ct", "real_ct", "fake_ct", "generated_ct", "fine_target_seg", "target_label",
                             "band_mask", "generated_mask"]
        self.netG = AOTGenerator(getattr(opt, "ngf", 64), getattr(opt, "aot_blocks", 8),
                                 tuple(getattr(opt, "aot_rates", (1, 2, 4, 8))))
        init_weights(self.netG, getattr(opt, "init_type", "normal"), getattr(opt, "init_gain", 0.02))
        self.netG.to(self.device)
        self.vgg: VGG19Features | None = None
        if not self.isTrain:
            return
        self.netD = SMPatchDiscriminator(1, getattr(opt, "ndf", 64))
        init_weights(self.netD, getattr(opt, "init_type", "normal"), getattr(opt, "init_gain", 0.02))
        self.netD.to(self.device)
        self.vgg = load_vgg19(getattr(opt, "vgg19_weights", None), self.device)
        if self.vgg is not None:
            self.loss_names[3:3] = ["perceptual", "style"]
        self.add_adam_optimizers(opt)

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
        fake_target, real_target = sm_patchgan_targets(self.generated_mask, getattr(self.opt, "sm_sigma", 10.0))
        size = tuple(self.real_ct.shape[-2:])
        with self.precision.autocast():
            fake_scores = patch_scores_at(self.netD(self.fake_ct.detach()), size)
            real_scores = patch_scores_at(self.netD(self.real_ct), size)
        self.loss_D_fake = F.mse_loss(fake_scores.float(), fake_target).detach()
        self.loss_D_real = F.mse_loss(real_scores.float(), real_target).detach()
        return F.mse_loss(fake_scores.float(), fake_target) + F.mse_loss(real_scores.float(), real_target)

    def generator_loss_terms(self) -> dict[str, torch.Tensor]:
        """Every weighted term of the generator loss (call after ``forward``)."""
        opt = self.opt
        size = tuple(self.real_ct.shape[-2:])
        with self.precision.autocast():
            scores = patch_scores_at(self.netD(self.fake_ct), size).float()
        mask = self.generated_mask
        adversarial = ((scores - 1.0) ** 2 * mask).mean() / mask.mean().clamp_min(1e-8)
        terms = {
            "G_L1": getattr(opt, "lambda_L1", 1.0) * F.l1_loss(self.generated_ct, self.real_ct),
            "G_adv": getattr(opt, "lambda_adv", 0.01) * adversarial,
            "G_Dice": getattr(opt, "lambda_dice_fine", 15.0) * (1 - dice_coefficient(self.fine_target_seg,
                                                                                    self.target_label)),
        }
        if self.vgg is not None:
            perceptual, style = perceptual_and_style_losses(self.vgg, self.fake_ct, self.real_ct)
            terms["perceptual"] = getattr(opt, "lambda_perceptual", 0.1) * perceptual
            terms["style"] = getattr(opt, "lambda_style", 250.0) * style
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
