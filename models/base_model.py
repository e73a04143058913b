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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from models.amp import MixedPrecision, load_scaler_states, scaled_step, scaler_states
from util.distributed import resolve_device
from util.fileio import atomic_torch_save


def get_scheduler(optimizer: torch.optim.Optimizer, opt: argparse.Namespace) -> Any:
    """Learning-rate scheduler of ``opt.lr_policy``: linear (constant for n_epochs, then linear to 0
    over n_epochs_decay), step, plateau or cosine. One scheduler step per epoch."""
    policy = getattr(opt, "lr_policy", "linear")
    n_epochs = getattr(opt, "n_epochs", 200)
    n_epochs_decay = getattr(opt, "n_epochs_decay", 800)
    if policy == "linear":
        epoch_count = getattr(opt, "epoch_count", 1)

        def lambda_rule(epoch: int) -> float:
            return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda_rule)
    if policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=getattr(opt, "lr_decay_iters", 50), gamma=0.1)
    if policy == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5)
    if policy == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=n_epochs, eta_min=0)
    raise ValueError(f"unknown lr_policy {policy!r} (linear | step | plateau | cosine)")


def unwrap(net: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    return getattr(net, "module", net)


class BaseModel(ABC):
    """Common machinery of trainable models (pix2pix interface)."""

    def __init__(self, opt: argparse.Namespace) -> None:
        self.opt = opt
        self.isTrain = bool(getattr(opt, "isTrain", True))
        self.device = resolve_device(getattr(opt, "gpu_ids", "-1"))
        self.save_dir = Path(getattr(opt, "checkpoints_dir", "./checkpoints")) / getattr(opt, "name", "experiment")
        self.loss_names: list[str] = []
        self.model_names: list[str] = []
        self.visual_names: list[str] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.optimizer_names: list[str] = []
        self.schedulers: list[Any] = []
        self.metric = 0.0
        self.precision = MixedPrecision.from_options(opt, self.device)
        self.scalers: dict[str, torch.amp.GradScaler] = {}

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

    def add_adam_optimizers(self, opt: argparse.Namespace) -> None:
        """One Adam optimizer per network of ``model_names`` (``--lr``, betas (``--beta1``, 0.999)), kept as
        ``optimizer_<name>`` and in ``optimizers`` / ``optimizer_names``."""
        betas = (getattr(opt, "beta1", 0.5), 0.999)
        lr = getattr(opt, "lr", 2e-4)
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
        """Create schedulers (training) and load networks.

        ``load=None`` follows pix2pix: load ``opt.epoch`` when testing or with ``--continue_train``.
        Pass ``load=False`` when the caller restores everything itself via ``load_state_dict``.
        """
        if self.isTrain:
            self.schedulers = [get_scheduler(optimizer, opt) for optimizer in self.optimizers]
        if load is None:
            load = (not self.isTrain) or bool(getattr(opt, "continue_train", False))
        if load:
            load_iter = getattr(opt, "load_iter", 0)
            self.load_networks(f"iter_{load_iter}" if load_iter > 0 else getattr(opt, "epoch", "latest"))
        if getattr(opt, "verbose", False):
            self.print_networks()

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
