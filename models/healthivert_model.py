"""HealthiVert-GAN training model (docs/design.md, 'Generator' to 'Discriminators and losses') in the pix2pix shape.

One step: generator forward, height-adaptive composition of coarse and fine CT, then one update of
each of the three PatchGANs (D1 composed CT, D2 target segmentation, D3 band x central columns of
the composed CT), then one generator update with

    loss_G = lambda_GAN * (GAN_D1 + GAN_D2 + GAN_D3)         (1/6 as the reference)
           + lambda_L1 * (|coarse - real| + |fine - real|) / band area
           + lambda_dice_coarse * (1 - Dice(coarse seg, neighbour labels))
           + lambda_dice_fine * (1 - Dice(fine seg, target label))
           + lambda_edge * MSE(Sobel(fine seg), Sobel(target label))
           + lambda_height * mean(|h1 - h| / h + |h2 - h| / h)

``--no_eem``, ``--no_shrm`` and ``--no_hgam`` switch modules off (``models.module_switches``): the edge
term, resp. the height term, becomes zero; without SHRM the composition uses the band height; without
HGAM the generator's attention input is all zeros.

Unlike the reference, the edge loss and D2 see the soft (sigmoid) segmentation, so both pass a
gradient to the generator, and the L1 normalisation does not shrink with the batch size
(``--protocol reference`` divides it by the batch size as the reference does).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from data.crops import DEFAULT_SPACING_MM
from data.masking import MaskingSettings, add_mask_height_option, mask_height_rows
from models.amp import add_amp_options
from models.base_model import BaseModel, add_schedule_options
from models.compilation import add_compile_option
from models.composition import compose_height_adaptive
from models.contextual_attention import flow_to_rgb
from models.losses import (
    GAN_MODES,
    GANLoss,
    SobelEdges,
    band_l1,
    dice_coefficient,
    gradient_penalty,
    relative_height_error,
)
from models.module_switches import ModuleSwitches, add_model_switches
from models.networks import GeneratorOutput, HealthiVertGenerator, NLayerDiscriminator, init_weights
from util.cli import add_option
from util.protocol import Protocol
from util.settings import FromOptions

IMAGE_KEYS = ("masked_ct", "real_ct", "band_mask", "offset_plane", "cam", "neighbour_label", "target_label")
ROW_KEYS = ("target_top", "target_bottom", "band_centre")
DISCRIMINATORS = ("D_1", "D_2", "D_3")


INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


@dataclass(frozen=True)
class HealthiVertSettings(FromOptions):
    """Networks and loss weights of the HealthiVert-GAN training model (defaults: the reference at batch 1).

    ngf / ndf: generator and discriminator widths; n_layers_D: PatchGAN depth; norm, init_type, init_gain:
    discriminator normalisation and initialisation; gan_mode: GAN objective; lambda_*: loss weights (module
    docstring); local_width: columns (pixels) seen by D3; mask_height_mm: band height (``--mask_height``);
    crop_spacing_mm: the crops' voxel size (S->I, A->P, R->L), saved in checkpoints by train.py; unknown
    (``None``) before training has read the crops.
    """

    ngf: int = 16
    mask_height_mm: float = field(default=MaskingSettings.mask_height_mm, metadata={"option": "mask_height"})
    crop_spacing_mm: tuple[float, ...] | None = None
    ndf: int = 64
    n_layers_D: int = 3
    norm: str = "batch"
    init_type: str = "normal"
    init_gain: float = 0.02
    gan_mode: str = "vanilla"
    lambda_GAN: float = 1.0 / 6.0
    lambda_L1: float = 200.0
    lambda_dice_coarse: float = 10.0
    lambda_dice_fine: float = 15.0
    lambda_edge: float = 800.0
    lambda_height: float = 40.0
    lambda_gp: float = 10.0
    local_width: int = 70

    def mask_height_px(self) -> int:
        """Band height in rows: ``mask_height_mm`` over the crops' row spacing (axis 0), or over the
        straightening default (``DEFAULT_SPACING_MM``) while the crops are unknown. Training and
        synthesis pass each batch's band rows to the generator; this is the default for a call that does not."""
        row_spacing = DEFAULT_SPACING_MM if self.crop_spacing_mm is None else float(self.crop_spacing_mm[0])
        return mask_height_rows(self.mask_height_mm, row_spacing)


def add_init_options(parser: argparse.ArgumentParser, what: str) -> argparse.ArgumentParser:
    """``--ndf``, ``--init_type`` and ``--init_gain``, shared by the models (``what``: the initialised networks)."""
    defaults = HealthiVertSettings()
    add_option(parser, "--ndf", type=int, default=defaults.ndf, help="discriminator width of the first conv layer")
    add_option(parser, "--init_type", type=str, default=defaults.init_type, choices=list(INIT_TYPES),
               help=f"{what} initialisation")
    add_option(parser, "--init_gain", type=float, default=defaults.init_gain, help="scale of the initialisation")
    return parser


def band_rows(band_mask: torch.Tensor) -> torch.Tensor:
    """Height of the band in pixels per sample: number of rows holding any band pixel, (B,) float."""
    return (band_mask.detach().amax(dim=(1, 3)) > 0.5).sum(dim=1).float()


def central_columns_mask(like: torch.Tensor, width_px: int) -> torch.Tensor:
    """(1,1,1,W) float mask of the ``width_px`` central columns (clipped to the image)."""
    columns = like.shape[-1]
    half = min(width_px, columns) // 2
    mask = torch.zeros(1, 1, 1, columns, device=like.device, dtype=like.dtype)
    mask[..., columns // 2 - half: columns // 2 - half + min(width_px, columns)] = 1.0
    return mask


class HealthiVertModel(BaseModel):
    """Two-stage HealthiVert generator with three PatchGAN discriminators."""

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool = True) -> argparse.ArgumentParser:
        """Model flags (defaults = reference at batch 1); flags already defined elsewhere are kept."""
        defaults = HealthiVertSettings()
        add_option(parser, "--ngf", type=int, default=defaults.ngf,
                   help="generator base width (16: ~0.99 M parameters)")
        add_mask_height_option(parser)
        add_amp_options(parser)
        add_compile_option(parser)
        if is_train:  # at synthesis the switches come from the checkpoint's options (settings_for)
            add_model_switches(parser)
            add_init_options(parser, "discriminator")
            add_option(parser, "--n_layers_D", type=int, default=defaults.n_layers_D,
                       help="PatchGAN depth (3 = 70x70 patches)")
            add_option(parser, "--norm", type=str, default=defaults.norm, choices=["batch", "instance", "none"],
                       help="discriminator normalisation")
            add_option(parser, "--gan_mode", type=str, default=defaults.gan_mode, choices=list(GAN_MODES),
                       help="GAN objective")
            add_option(parser, "--lambda_GAN", type=float, default=defaults.lambda_GAN,
                       help="weight of the sum of the three generator GAN terms")
            add_option(parser, "--lambda_L1", type=float, default=defaults.lambda_L1,
                       help="weight of the band-normalised L1 of coarse and fine composed CT")
            add_option(parser, "--lambda_dice_coarse", type=float, default=defaults.lambda_dice_coarse,
                       help="weight of the Dice loss of the coarse neighbour segmentation")
            add_option(parser, "--lambda_dice_fine", type=float, default=defaults.lambda_dice_fine,
                       help="weight of the Dice loss of the fine target segmentation")
            add_option(parser, "--lambda_edge", type=float, default=defaults.lambda_edge,
                       help="weight of the Sobel edge loss (EEM)")
            add_option(parser, "--lambda_height", type=float, default=defaults.lambda_height,
                       help="weight of each relative height error (h1 and h2, SHRM)")
            add_option(parser, "--lambda_gp", type=float, default=defaults.lambda_gp,
                       help="gradient-penalty weight (wgangp)")
            add_option(parser, "--local_width", type=int, default=defaults.local_width,
                       help="width in pixels of the central columns seen by the local discriminator D3")
            add_schedule_options(parser)
        return parser

    @staticmethod
    def inference_generator(options: dict[str, Any]) -> torch.nn.Module:
        """The generator of a checkpoint saved with ``options`` (``--ngf``; the band rows from ``--mask_height``
        and the saved crop spacing)."""
        settings = HealthiVertSettings.from_options(options)
        return HealthiVertGenerator(settings.ngf, mask_height_px=settings.mask_height_px())

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.settings = settings = HealthiVertSettings.from_options(opt)
        self.protocol = Protocol.from_options(opt)
        self.switches = ModuleSwitches.from_options(opt)
        self.model_names = ["G", *DISCRIMINATORS] if self.isTrain else ["G"]
        self.loss_names = ["G_GAN", "G_L1", "coarse_Dice", "G_Dice", "edge", "h", "G",
                           "D_real_1", "D_fake_1", "D_real_2", "D_fake_2", "D_real_3", "D_fake_3"]
        self.visual_names = ["masked_ct", "real_ct", "fake_ct", "fake_ct_coarse", "fine_ct", "coarse_neighbour_seg",
                             "neighbour_label", "fine_target_seg", "target_label", "band_mask", "cam",
                             "real_edges", "fake_edges", "fake_local", "attention_flow"]
        self.netG = HealthiVertGenerator(settings.ngf, mask_height_px=settings.mask_height_px())
        self.netG.to(self.device, memory_format=torch.channels_last)
        self.sobel = SobelEdges().to(self.device)
        if not self.isTrain:
            return
        if settings.gan_mode == "wgangp":
            self.loss_names += ["D_gp_1", "D_gp_2", "D_gp_3"]
        for name in DISCRIMINATORS:
            net = NLayerDiscriminator(1, settings.ndf, settings.n_layers_D, settings.norm)
            init_weights(net, settings.init_type, settings.init_gain)
            setattr(self, "net" + name, net.to(self.device, memory_format=torch.channels_last))
        self.criterionGAN = GANLoss(settings.gan_mode)
        self.add_adam_optimizers()

    # ------------------------------------------------------------------ input / forward
    def set_input(self, batch: dict[str, Any]) -> None:
        """Consume a collated dataset batch (CONTRACTS: images (B,1,H,W), rows/heights (B,))."""
        missing = [k for k in (*IMAGE_KEYS, *ROW_KEYS, "height_px") if k not in batch]
        if missing:
            raise KeyError(f"HealthiVertModel.set_input: batch lacks {', '.join(missing)}")
        for key in IMAGE_KEYS:  # non_blocking: the loader pins its batches when training on a GPU
            image = torch.as_tensor(batch[key]).to(self.device, dtype=torch.float32, non_blocking=True)
            setattr(self, key, image.unsqueeze(0) if image.dim() == 3 else image)
        for key in ROW_KEYS:
            setattr(self, key, torch.as_tensor(batch[key]).to(self.device, non_blocking=True).long().view(-1))
        self.height_px = torch.as_tensor(batch["height_px"]).to(self.device, dtype=torch.float32,
                                                                non_blocking=True).view(-1)
        self.mask_height_px = band_rows(self.band_mask)
        keys = batch.get("key", [])
        self.image_paths = [keys] if isinstance(keys, str) else list(keys)

    def compose(self, original: torch.Tensor, generated: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
        """Height-adaptive composition of ``generated`` into ``original`` for the current batch."""
        centre = self.band_centre if self.protocol.compose_at_band_centre else \
            torch.div(self.target_top + self.target_bottom, 2, rounding_mode="floor")
        return compose_height_adaptive(original, generated, self.target_top, self.target_bottom, centre,
                                       height, self.mask_height_px.long())

    def forward(self) -> None:
        """Generator forward and compositions (the generator runs under autocast with --amp)."""
        cam = self.cam if self.switches.hgam else torch.zeros_like(self.cam)
        with self.precision.autocast():
            out: GeneratorOutput = self.netG(self.masked_ct, self.offset_plane, self.band_mask, cam,
                                             self.mask_height_px)
        self.output = out
        self.fine_ct, self.fine_target_seg = out.fine_ct, out.fine_target_seg
        self.coarse_neighbour_seg = out.coarse_neighbour_seg
        fine_height, coarse_height = (out.fine_height, out.coarse_height) if self.switches.shrm else \
            (self.mask_height_px, self.mask_height_px)
        self.fake_ct = self.compose(self.real_ct, out.fine_ct, fine_height)
        self.fake_ct_coarse = self.compose(self.real_ct, out.coarse_ct, coarse_height)
        local = self.band_mask * central_columns_mask(self.band_mask, self.settings.local_width)
        self.fake_local = self.fake_ct * local
        self.real_local = self.real_ct * local

    # ------------------------------------------------------------------ losses
    def discriminator_pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Discriminator name -> (fake, real) images it judges."""
        return {"D_1": (self.fake_ct, self.real_ct), "D_2": (self.fine_target_seg, self.target_label),
                "D_3": (self.fake_local, self.real_local)}

    def discriminator_loss(self, name: str) -> torch.Tensor:
        """0.5 * (fake + real) GAN loss of one discriminator on detached fakes (+ gradient penalty)."""
        net = getattr(self, "net" + name)
        fake, real = self.discriminator_pairs()[name]
        index = name[-1]
        with self.precision.autocast():
            loss_fake = self.criterionGAN(net(fake.detach()), False)
            loss_real = self.criterionGAN(net(real), True)
        setattr(self, f"loss_D_fake_{index}", loss_fake.detach())
        setattr(self, f"loss_D_real_{index}", loss_real.detach())
        loss = 0.5 * (loss_fake + loss_real)
        if self.criterionGAN.gan_mode == "wgangp":
            penalty = gradient_penalty(net, real, fake, self.settings.lambda_gp)
            setattr(self, f"loss_D_gp_{index}", penalty.detach())
            loss = loss + penalty
        return loss

    def generator_loss_terms(self) -> dict[str, torch.Tensor]:
        """Every weighted term of the generator loss (call after ``forward``)."""
        weights = self.settings
        out = self.output
        fakes = {name: pair[0] for name, pair in self.discriminator_pairs().items()}
        with self.precision.autocast():
            gan = {name: self.criterionGAN(getattr(self, "net" + name)(fake), True) for name, fake in fakes.items()}
        lambda_gan = weights.lambda_GAN
        self.real_edges = self.sobel(self.target_label)
        self.fake_edges = self.sobel(out.fine_target_seg.float())
        l1_scale = 1.0 / self.real_ct.shape[0] if self.protocol.l1_divided_by_batch else 1.0
        terms = {
            "G_GAN_ct": lambda_gan * gan["D_1"].float(),
            "G_GAN_seg": lambda_gan * gan["D_2"].float(),
            "G_GAN_local": lambda_gan * gan["D_3"].float(),
            "G_L1": weights.lambda_L1 * l1_scale * band_l1(
                [self.fake_ct, self.fake_ct_coarse], self.real_ct, self.band_mask),
            "coarse_Dice": weights.lambda_dice_coarse * (
                1 - dice_coefficient(out.coarse_neighbour_seg, self.neighbour_label)),
            "G_Dice": weights.lambda_dice_fine * (
                1 - dice_coefficient(out.fine_target_seg, self.target_label)),
        }
        zero = torch.zeros((), device=self.real_ct.device)  # a switched-off module's term: no value, no gradient
        terms["edge"] = weights.lambda_edge * F.mse_loss(self.fake_edges, self.real_edges) \
            if self.switches.eem else zero
        if self.switches.shrm:
            height_error = relative_height_error(out.coarse_height, self.height_px) + \
                relative_height_error(out.fine_height, self.height_px)
            terms["h"] = weights.lambda_height * height_error.mean()
        else:
            terms["h"] = zero
        return terms

    def generator_loss(self) -> torch.Tensor:
        """Total generator loss; records each term as ``loss_<name>``."""
        terms = self.generator_loss_terms()
        for name, value in terms.items():
            setattr(self, "loss_" + name, value.detach())
        self.loss_G_GAN = (terms["G_GAN_ct"] + terms["G_GAN_seg"] + terms["G_GAN_local"]).detach()
        total = torch.stack(list(terms.values())).sum()
        self.loss_G = total.detach()
        return total

    # ------------------------------------------------------------------ optimisation
    def optimize_parameters(self) -> None:
        """Forward, one step of D1, D2, D3, then one generator step (reference order); each network has its
        own GradScaler under float16 AMP."""
        self.forward()
        discriminators = [getattr(self, "net" + name) for name in DISCRIMINATORS]
        for name, net in zip(DISCRIMINATORS, discriminators):
            self.set_requires_grad(net, True)
            getattr(self, "optimizer_" + name).zero_grad(set_to_none=True)
            self.optimizer_step(name, self.discriminator_loss(name))
        self.set_requires_grad(discriminators, False)
        self.optimizer_G.zero_grad(set_to_none=True)
        self.optimizer_step("G", self.generator_loss())

    def get_current_visuals(self) -> OrderedDict[str, torch.Tensor]:
        """Display images, all mapped to [-1, 1] (CT as is; masks, edges, CAM m -> 2m - 1; flow as RGB).

        The attention flow is colour-coded only here, not on every training forward (it needs a GPU sync).
        """
        ct_like = {"masked_ct", "real_ct", "fake_ct", "fake_ct_coarse", "fine_ct", "fake_local", "attention_flow"}
        visuals: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name in self.visual_names:
            if name == "attention_flow" and hasattr(self, "output"):
                visuals[name] = flow_to_rgb(self.output.attention_flow.detach().float()) * 2.0 - 1.0
                continue
            if not hasattr(self, name):
                continue
            image = getattr(self, name).detach().float()
            visuals[name] = image if name in ct_like else image * 2.0 - 1.0
        return visuals
