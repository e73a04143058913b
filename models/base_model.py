"""pix2pix-style base class for trainable models: networks, optimizers, schedulers, checkpoints.

Subclasses fill ``model_names`` (networks stored as ``self.net<name>``), ``loss_names``
(``self.loss_<name>``), ``visual_names`` (``self.<name>``) and ``optimizers``, and implement
``set_input``, ``forward`` and ``optimize_parameters``. Mixed precision (``--amp``, ``--amp_dtype``) is
``self.precision`` (:mod:`models.amp`): run networks under ``self.precision.autocast()`` and update each
network with ``self.optimizer_step(name, loss)``, which keeps one GradScaler per optimizer.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from models.amp import MixedPrecision, load_scaler_states, scaled_step, scaler_states
from models.compilation import compile_networks, require_compile
from util.cli import add_option
from util.distributed import resolve_device
from util.fileio import atomic_torch_save
from util.settings import FromOptions

LR_POLICIES = ("linear", "step", "plateau", "cosine")


@dataclass(frozen=True)
class ScheduleSettings(FromOptions):
    """Adam and learning-rate schedule of a training run (pix2pix names; one scheduler step per epoch).

    lr: initial learning rate; beta1: Adam beta1 (beta2 is 0.999); lr_policy: one of ``LR_POLICIES``;
    lr_decay_iters: epochs between decays (step); n_epochs: epochs at the initial rate; n_epochs_decay:
    epochs of linear decay to zero; epoch_count: number of the first epoch.
    """

    lr: float = 2e-4
    beta1: float = 0.5
    lr_policy: str = "linear"
    lr_decay_iters: int = 50
    n_epochs: int = 200
    n_epochs_decay: int = 800
    epoch_count: int = 1

    def __post_init__(self) -> None:
        if self.lr_policy not in LR_POLICIES:
            raise ValueError(f"unknown lr_policy {self.lr_policy!r} ({' | '.join(LR_POLICIES)})")


def add_schedule_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of :class:`ScheduleSettings`, defined once for train.py and the models' own parsers."""
    defaults = ScheduleSettings()
    add_option(parser, "--n_epochs", type=int, default=defaults.n_epochs, help="epochs at the initial learning rate")
    add_option(parser, "--n_epochs_decay", type=int, default=defaults.n_epochs_decay,
               help="epochs of linear decay to zero")
    add_option(parser, "--epoch_count", type=int, default=defaults.epoch_count,
               help="number of the first epoch (ignored by --continue_train, which resumes the checkpoint's)")
    add_option(parser, "--lr", type=float, default=defaults.lr, help="initial Adam learning rate")
    add_option(parser, "--beta1", type=float, default=defaults.beta1, help="Adam beta1")
    add_option(parser, "--lr_policy", default=defaults.lr_policy, choices=list(LR_POLICIES),
               help="learning-rate policy (one step per epoch)")
    add_option(parser, "--lr_decay_iters", type=int, default=defaults.lr_decay_iters,
               help="step policy: epochs between decays")
    return parser


@dataclass(frozen=True)
class ModelRunSettings(FromOptions):
    """Where a model runs and which checkpoint it loads.

    is_train: training (optimizers, schedulers) or inference; gpu_ids: ``--gpu_ids`` (``util.distributed``);
    checkpoints_dir / name: the run folder; continue_train: resume from ``epoch`` (or ``iter_<load_iter>``
    when ``load_iter`` > 0); verbose: print network sizes; compile: ``torch.compile`` every network in
    :meth:`BaseModel.setup` (``--compile``, ``models.compilation``).
    """

    is_train: bool = field(metadata={"option": "isTrain"})
    gpu_ids: Any
    checkpoints_dir: str
    name: str
    continue_train: bool = False
    load_iter: int = 0
    epoch: str = "latest"
    verbose: bool = False
    compile: bool = False

    @property
    def save_dir(self) -> Path:
        return Path(self.checkpoints_dir) / self.name


def get_scheduler(optimizer: torch.optim.Optimizer, settings: ScheduleSettings) -> Any:
    """Learning-rate scheduler of ``settings.lr_policy``: linear (constant for n_epochs, then linear to 0
    over n_epochs_decay), step, plateau or cosine. One scheduler step per epoch."""
    n_epochs, n_epochs_decay = settings.n_epochs, settings.n_epochs_decay
    if settings.lr_policy == "linear":
        epoch_count = settings.epoch_count

        def lambda_rule(epoch: int) -> float:
            return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda_rule)
    if settings.lr_policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=settings.lr_decay_iters, gamma=0.1)
    if settings.lr_policy == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5)
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=n_epochs, eta_min=0)


def unwrap(net: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    return getattr(net, "module", net)


class BaseModel(ABC):
    """Common machinery of trainable models (pix2pix interface)."""

    def __init__(self, opt: argparse.Namespace) -> None:
        self.opt = opt
        self.run = ModelRunSettings.from_options(opt)
        self.schedule = ScheduleSettings.from_options(opt)
        self.isTrain = bool(self.run.is_train)
        self.device = resolve_device(self.run.gpu_ids)
        self.save_dir = self.run.save_dir
        self.loss_names: list[str] = []
        self.model_names: list[str] = []
        self.visual_names: list[str] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.optimizer_names: list[str] = []
        self.schedulers: list[Any] = []
        self.metric = 0.0
        self.precision = MixedPrecision.from_options(opt, self.device)
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        if self.run.compile:  # fail before the networks are built
            require_compile(self.device)

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        """Add model-specific options to ``parser``."""
        return parser

    @staticmethod
    def inference_generator(options: dict[str, Any]) -> nn.Module:
        """The generator of a checkpoint saved with ``options`` (its ``options`` dict), untrained, with the
        synthesis call signature of ``models.synthesis.runner.Generator``."""
        raise NotImplementedError("this model has no generator for synthesis")

    @abstractmethod
    def set_input(self, batch: dict[str, Any]) -> None:
        """Unpack a collated dataset batch onto the device."""

    @abstractmethod
    def forward(self) -> None:
        """Run the networks on the current input."""

    @abstractmethod
    def optimize_parameters(self) -> None:
        """One optimisation step on the current input."""

    def add_adam_optimizers(self) -> None:
        """One Adam optimizer per network of ``model_names`` (``--lr``, betas (``--beta1``, 0.999)), kept as
        ``optimizer_<name>`` and in ``optimizers`` / ``optimizer_names``."""
        betas = (self.schedule.beta1, 0.999)
        lr = self.schedule.lr
        for name in self.model_names:
            optimizer = torch.optim.Adam(getattr(self, "net" + name).parameters(), lr=lr, betas=betas)
            setattr(self, "optimizer_" + name, optimizer)
            self.optimizers.append(optimizer)
            self.optimizer_names.append(name)

    def grad_scalers(self) -> dict[str, torch.amp.GradScaler]:
        """Optimizer name -> its own GradScaler (created on first use; disabled unless float16 AMP)."""
        for name in self.optimizer_names:
            if name not in self.scalers:
                self.scalers[name] = self.precision.grad_scaler()
        return self.scalers

    def optimizer_step(self, name: str, loss: torch.Tensor) -> None:
        """Backward of ``loss`` and one step of optimizer ``name`` with that optimizer's GradScaler."""
        optimizer = self.optimizers[self.optimizer_names.index(name)]
        scaled_step(loss, optimizer, self.grad_scalers()[name])

    def networks(self) -> dict[str, nn.Module]:
        """Name -> network (possibly wrapped), in ``model_names`` order."""
        return {name: getattr(self, "net" + name) for name in self.model_names}

    def setup(self, opt: argparse.Namespace, load: bool | None = None) -> None:
        """Create schedulers (training), load networks and, with ``--compile``, compile them in place
        (``models.compilation``: ``state_dict`` keys and DDP wrapping stay those of the eager networks).

        ``load=None`` follows pix2pix: load ``opt.epoch`` when testing or with ``--continue_train``.
        Pass ``load=False`` when the caller restores everything itself via ``load_state_dict``.
        """
        run = ModelRunSettings.from_options(opt)
        if self.isTrain:
            self.schedulers = [get_scheduler(optimizer, ScheduleSettings.from_options(opt))
                               for optimizer in self.optimizers]
        if load is None:
            load = (not self.isTrain) or run.continue_train
        if load:
            self.load_networks(f"iter_{run.load_iter}" if run.load_iter > 0 else run.epoch)
        if run.verbose:
            self.print_networks()
        if run.compile:
            compile_networks(self.networks(), self.device)

    def train(self) -> None:
        """Put every network in training mode."""
        for net in self.networks().values():
            net.train()

    def eval(self) -> None:
        """Put every network in evaluation mode."""
        for net in self.networks().values():
            net.eval()

    def test(self) -> None:
        """Forward pass without gradients (visuals become available)."""
        with torch.no_grad():
            self.forward()

    def get_image_paths(self) -> list[str]:
        """Identifiers of the current batch's samples."""
        return list(getattr(self, "image_paths", []))

    def update_learning_rate(self) -> float:
        """Step every scheduler (once per epoch); returns the new learning rate of the first optimizer."""
        for scheduler in self.schedulers:
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step(self.metric)
            else:
                scheduler.step()
        return self.optimizers[0].param_groups[0]["lr"] if self.optimizers else 0.0

    def get_current_visuals(self) -> OrderedDict[str, torch.Tensor]:
        """Name -> (B,C,H,W) image tensor (detached) for display."""
        return OrderedDict((name, getattr(self, name).detach()) for name in self.visual_names)

    def get_current_losses(self) -> OrderedDict[str, float]:
        """Name -> scalar value of every loss in ``loss_names`` computed so far."""
        losses: OrderedDict[str, float] = OrderedDict()
        for name in self.loss_names:
            value = getattr(self, "loss_" + name, None)
            if value is not None:
                losses[name] = float(value)
        return losses

    def network_path(self, epoch: str | int, name: str) -> Path:
        """``<checkpoints_dir>/<name>/<epoch>_net_<net>.pth``."""
        return self.save_dir / f"{epoch}_net_{name}.pth"

    def save_networks(self, epoch: str | int) -> None:
        """Save every network's weights (atomic writes)."""
        for name, net in self.networks().items():
            state = {key: value.detach().cpu() for key, value in unwrap(net).state_dict().items()}
            atomic_torch_save(state, self.network_path(epoch, name))

    def load_networks(self, epoch: str | int) -> None:
        """Load every network's weights saved by ``save_networks``; clear error if a file is missing."""
        for name, net in self.networks().items():
            path = self.network_path(epoch, name)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no saved weights for network {name} at epoch {epoch}")
            unwrap(net).load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def print_networks(self) -> None:
        """Print each network's parameter count."""
        for name, net in self.networks().items():
            count = sum(p.numel() for p in net.parameters())
            print(f"[Network {name}] total number of parameters: {count / 1e6:.3f} M")

    @staticmethod
    def set_requires_grad(nets: nn.Module | list[nn.Module], requires_grad: bool) -> None:
        """Enable/disable gradients of all parameters of ``nets``."""
        for net in nets if isinstance(nets, list) else [nets]:
            for param in net.parameters():
                param.requires_grad_(requires_grad)

    def state_dict(self) -> dict[str, Any]:
        """Everything trainable in one dict: nets, optimizers, schedulers, GradScalers (and extras of subclasses)."""
        return {
            "nets": {name: unwrap(net).state_dict() for name, net in self.networks().items()},
            "optimizers": {name: opt.state_dict() for name, opt in zip(self.optimizer_names, self.optimizers)},
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "scalers": scaler_states(self.grad_scalers()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (call ``setup(opt, load=False)`` first for schedulers)."""
        missing = [name for name in self.model_names if name not in state["nets"]]
        if missing:
            raise KeyError(f"checkpoint has no weights for network(s) {', '.join(missing)}")
        for name, net in self.networks().items():
            unwrap(net).load_state_dict(state["nets"][name])
        if "optimizers" in state:
            for name, optimizer in zip(self.optimizer_names, self.optimizers):
                optimizer.load_state_dict(state["optimizers"][name])
        for scheduler, sched_state in zip(self.schedulers, state.get("schedulers", [])):
            scheduler.load_state_dict(sched_state)
        load_scaler_states(self.grad_scalers(), state)
