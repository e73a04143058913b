"""Training HealthiVert-GAN (and the AOT-GAN baseline): the pix2pix loop, exact resume, DDP wrapping, validation.

``train.py`` parses the options, sets up the devices (``util.distributed``) and runs :class:`Trainer`.
Every epoch draws one slice per healthy ``train`` vertebra; checkpoints (``util.checkpoint``) hold the
networks, optimizers, schedulers, AMP scalers, progress, per-rank RNG states and options (docs/design.md,
'Checkpoints'; 'Devices and distributed runs' for DDP). Validation on the healthy ``val`` vertebrae
reports L1 and PSNR of the band, Dice of the target segmentation and the height error in mm.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from data.loader import DatasetLoader, create_dataset
from models import create_model
from models.healthivert_model import HealthiVertSettings
from util.checkpoint import (
    Progress,
    checkpoint_path,
    load_checkpoint,
    rank_rng_states,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
)
from util.distributed import DistributedContext, all_ranks_succeed, all_reduce_sum, gather_objects
from util.settings import options_to_dict

# options that shape the networks, their inputs or their losses: a resume must use the checkpoint's values
ARCHITECTURE_OPTIONS = ("model", "dataset_mode", "plane", "ngf", "ndf", "n_layers_D", "norm", "mask_height",
                        "local_width", "hu_window", "protocol", "no_eem", "no_shrm", "no_hgam")


def option_differences(saved: dict[str, Any], given: argparse.Namespace,
                       keys: tuple[str, ...] = ARCHITECTURE_OPTIONS) -> list[str]:
    """``"--key saved -> given"`` for every architecture option that differs (keys missing on either side are
    ignored)."""
    differences = []
    for key in keys:
        if key not in saved or not hasattr(given, key):
            continue
        now = getattr(given, key)
        now = list(now) if isinstance(now, tuple) else now
        if saved[key] != now:
            differences.append(f"--{key} {saved[key]} -> {now}")
    return differences


def uses_sync_batchnorm(name: str, opt: argparse.Namespace, device: torch.device) -> bool:
    """Whether network ``name`` gets SyncBatchNorm under DDP: on GPU, except a WGAN-GP critic.

    The gradient penalty differentiates the critic twice and SyncBatchNorm has no double backward, so
    with ``--gan_mode wgangp`` the discriminators keep per-GPU batch statistics.
    """
    gan_mode = HealthiVertSettings.from_options(opt).gan_mode  # the default where --gan_mode is absent (AOT-GAN)
    is_critic = name.startswith("D") and gan_mode == "wgangp"
    return device.type == "cuda" and not is_critic


def wrap_distributed(model: Any, context: DistributedContext) -> None:
    """Replace each ``model.net<Name>`` by a DDP wrapper, with SyncBatchNorm instead of BatchNorm on GPU.

    ``convert_sync_batchnorm`` keeps the parameter objects, so the model's optimizers stay valid.
    PyTorch's SyncBatchNorm runs on GPU only: on CPU (Gloo) batch norm keeps per-process batch
    statistics, and so do WGAN-GP critics (:func:`uses_sync_batchnorm`). DDP broadcasts rank 0's
    weights and buffers, so every rank starts identical.
    """
    for name in model.model_names:
        net = getattr(model, "net" + name)
        if uses_sync_batchnorm(name, model.opt, context.device):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        setattr(model, "net" + name, nn.parallel.DistributedDataParallel(net, device_ids=device_ids))


def broadcast_buffers(model: Any) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank, as DDP does before each forward.

    Without SyncBatchNorm (CPU) each rank's last forward leaves its own running statistics; this makes
    the final models identical on all ranks.
    """
    for name in model.model_names:
        for buffer in getattr(model, "net" + name).buffers():
            dist.broadcast(buffer, src=0)


@contextlib.contextmanager
def unwrapped_networks(model: Any) -> Iterator[None]:
    """Temporarily use the bare networks (no DDP collectives), e.g. for validation on each rank."""
    wrapped = {name: getattr(model, "net" + name) for name in model.model_names}
    try:
        for name, net in wrapped.items():
            setattr(model, "net" + name, getattr(net, "module", net))
        yield
    finally:
        for name, net in wrapped.items():
            setattr(model, "net" + name, net)


def band_metrics(model: Any, row_spacing_mm: float) -> dict[str, torch.Tensor]:
    """Per-sample validation metrics of the current batch after ``model.test()``.

    band_l1: mean |fake - real| in the band (windowed CT units, [-1, 1]); band_psnr: PSNR of the band in
    dB (data range 2); dice: Dice of the fine target segmentation (> 0.5) and the target label;
    height_error_mm: |fine height - (x2 - x1)| x row spacing.
    """
    band = (model.band_mask > 0.5).float()
    area = band.sum(dim=(1, 2, 3)).clamp_min(1.0)
    error = (model.fake_ct.float() - model.real_ct) * band
    band_l1 = error.abs().sum(dim=(1, 2, 3)) / area
    mse = (error ** 2).sum(dim=(1, 2, 3)) / area
    band_psnr = 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))
    predicted = model.output.fine_target_seg.float() > 0.5
    target = model.target_label > 0.5
    overlap = (predicted & target).sum(dim=(1, 2, 3)).float()
    total = (predicted.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))).float()
    dice = torch.where(total > 0, 2.0 * overlap / total.clamp_min(1.0), torch.ones_like(total))
    height_error_mm = (model.output.fine_height.float() - model.height_px).abs() * row_spacing_mm
    return {"band_l1": band_l1, "band_psnr": band_psnr, "dice": dice, "height_error_mm": height_error_mm}


def validate(model: Any, loader: DatasetLoader) -> dict[str, float]:
    """Mean validation metrics over the centre slices of the validation vertebrae (all ranks' shards)."""
    names = ("band_l1", "band_psnr", "dice", "height_error_mm")
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    row_spacing = loader.dataset.row_spacing_mm
    loader.set_epoch(0)
    model.eval()
    try:
        with unwrapped_networks(model):
            for batch in loader:
                model.set_input(batch)
                model.test()
                metrics = band_metrics(model, row_spacing)
                sums[:-1] += torch.stack([metrics[n].sum().double().cpu() for n in names])
                sums[-1] += len(batch["key"])
    finally:
        model.train()
    sums = all_reduce_sum(sums)
    return {name: float(sums[i] / sums[-1]) for i, name in enumerate(names)}


class Trainer:
    """The pix2pix training loop with exact resume, checkpoints, logging and validation."""

    def __init__(self, opt: argparse.Namespace, context: DistributedContext) -> None:
        self.opt = opt
        self.context = context
        self.folder = Path(opt.checkpoints_dir) / opt.name
        with all_ranks_succeed():  # checked before any work, on every rank
            resume_from = self._resume_checkpoint() if opt.continue_train else None
        self.train_loader = create_dataset(opt, phase="train")
        samples_per_step = opt.batch_size * context.world_size
        if context.is_main and samples_per_step > len(self.train_loader):
            warnings.warn(f"--batch_size {opt.batch_size} x {context.world_size} process(es) exceeds the "
                          f"{len(self.train_loader)} training vertebrae: each epoch is one smaller batch", stacklevel=2)
        self.val_loader = self._validation_loader()
        self.progress = Progress(epoch=opt.epoch_count, epoch_iter=0, total_iters=0)
        self.resumed = False
        self.visualizer = None
        with all_ranks_succeed():  # a rank that fails here (e.g. reading the checkpoint) stops every rank
            self.model = create_model(opt)
            self.model.setup(opt, load=False)
            if resume_from is not None:
                self._resume(*resume_from)
            if context.is_main:
                from util.visualizer import Visualizer

                self.visualizer = Visualizer(opt, resume_iters=self.progress.total_iters if self.resumed else None)
        if context.world_size > 1:
            wrap_distributed(self.model, context)

    def _validation_loader(self) -> DatasetLoader | None:
        if self.opt.val_freq <= 0:
            return None
        try:
            return create_dataset(self.opt, phase=self.opt.val_phase, shuffle=False)
        except ValueError as err:
            if self.context.is_main:
                warnings.warn(f"validation disabled: {err}", stacklevel=2)
            return None

    def _resume_checkpoint(self) -> tuple[Path, dict[str, Any]]:
        """The checkpoint to resume from (on the CPU), refused when its architecture options differ from the given
        ones."""
        tag = f"iter_{self.opt.load_iter}" if self.opt.load_iter > 0 else self.opt.epoch
        path = checkpoint_path(self.folder, tag)
        checkpoint = load_checkpoint(path, map_location="cpu")
        differences = option_differences(checkpoint.get("options") or {}, self.opt)
        if differences:
            raise ValueError(f"{path}: --continue_train with other architecture options than the checkpoint "
                             f"({'; '.join(differences)}); use the saved values or another --name")
        return path, checkpoint

    def _resume(self, path: Path, checkpoint: dict[str, Any]) -> None:
        try:
            self.progress = restore_checkpoint(checkpoint, self.model, rank=self.context.rank,
                                               device=self.context.device)
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[0]
            raise ValueError(f"{path}: checkpoint does not fit the model ({first_line})") from None
        saved_ranks = len(rank_rng_states(checkpoint))
        if self.context.rank >= saved_ranks:
            warnings.warn(f"{path}: saved by {saved_ranks} process(es); rank {self.context.rank} keeps its RNG seeded "
                          f"from --seed {self.opt.seed} + rank", stacklevel=2)
        if self.progress.epoch_done:
            self.progress = Progress(self.progress.epoch + 1, 0, self.progress.total_iters)
        self.resumed = True
        if self.context.is_main:
            print(f"resuming from {path}: epoch {self.progress.epoch}, batch {self.progress.epoch_iter}, "
                  f"iteration {self.progress.total_iters}")

    @property
    def last_epoch(self) -> int:
        return self.opt.n_epochs + self.opt.n_epochs_decay

    def planned_iterations(self) -> int:
        """Iterations of the whole run (bounded by ``--max_steps``)."""
        per_epoch = self.train_loader.batches_per_epoch()
        remaining_epochs = self.last_epoch - self.progress.epoch + 1
        total = self.progress.total_iters + max(remaining_epochs * per_epoch - self.progress.epoch_iter, 0)
        return min(total, self.opt.max_steps) if self.opt.max_steps > 0 else total

    def save(self, tag: str | int, progress: Progress) -> None:
        """Write ``<tag>.pth`` on rank 0 with every rank's RNG states (call on every rank)."""
        rng_states = gather_objects(rng_state(self.context.device))
        with all_ranks_succeed():
            if self.context.is_main:
                dataset = self.train_loader.dataset
                # the crop geometry a model was trained on, so inference can straighten new scans alike
                geometry = {"crop_size": [int(n) for n in dataset.crop_shape],
                            "crop_spacing_mm": [float(x) for x in dataset.spacing_mm]}
                save_checkpoint(checkpoint_path(self.folder, tag), self.model, progress,
                                {**options_to_dict(self.opt), **geometry}, rng_states)

    def current_lr(self) -> float:
        return float(self.model.optimizers[0].param_groups[0]["lr"]) if self.model.optimizers else 0.0

    def run(self) -> Progress:
        """Train until the last epoch or ``--max_steps``; returns the final progress."""
        from tqdm import tqdm

        opt = self.opt
        bar = tqdm(total=self.planned_iterations(), initial=self.progress.total_iters, unit="it", dynamic_ncols=True,
                   disable=not self.context.is_main or opt.no_progress, smoothing=0.1)
        total_iters = self.progress.total_iters
        try:
            for epoch in range(self.progress.epoch, self.last_epoch + 1):
                start_batch = self.progress.epoch_iter if epoch == self.progress.epoch else 0
                bar.set_description(f"epoch {epoch}/{self.last_epoch}")
                if self._run_epoch(epoch, start_batch, bar):
                    break
                with warnings.catch_warnings():  # resuming at an epoch's end steps the LR before any optimizer step
                    warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                    self.model.update_learning_rate()
                total_iters = self.progress.total_iters
                done = Progress(epoch, self.progress.epoch_iter, total_iters, epoch_done=True)
                self.save("latest", done)
                if epoch % opt.save_epoch_freq == 0 or epoch == self.last_epoch:
                    self.save(epoch, done)
                if self.val_loader is not None and (epoch % opt.val_freq == 0 or epoch == self.last_epoch):
                    self._validate(epoch)
        finally:
            bar.close()
            if self.visualizer is not None:
                self.visualizer.close()
        if self.context.world_size > 1:
            broadcast_buffers(self.model)
        return self.progress

    def _run_epoch(self, epoch: int, start_batch: int, bar: Any) -> bool:
        """Train one epoch from batch ``start_batch``; True when ``--max_steps`` stopped training."""
        opt = self.opt
        self.train_loader.set_epoch(epoch, start_batch)
        epoch_iter = start_batch
        data_start = time.perf_counter()
        for batch in self.train_loader:
            data_time = time.perf_counter() - data_start
            step_start = time.perf_counter()
            self.model.set_input(batch)
            self.model.optimize_parameters()
            epoch_iter += 1
            self.progress = Progress(epoch, epoch_iter, self.progress.total_iters + 1)
            total = self.progress.total_iters
            bar.update(1)
            if self.context.is_main and total % opt.print_freq == 0:
                losses = self.model.get_current_losses()
                self.visualizer.log_losses(epoch, epoch_iter, total, losses, self.current_lr(),
                                           time.perf_counter() - step_start, data_time)
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]}, refresh=False)
            if self.context.is_main and total % opt.display_freq == 0:
                self.visualizer.display_visuals(self.model.get_current_visuals(), epoch, total)
            if total % opt.save_latest_freq == 0:
                self.save("latest", self.progress)
                if opt.save_by_iter:
                    self.save(f"iter_{total}", self.progress)
            if opt.max_steps > 0 and total >= opt.max_steps:
                self.save("latest", self.progress)
                return True
            data_start = time.perf_counter()
        return False

    def _validate(self, epoch: int) -> None:
        metrics = validate(self.model, self.val_loader)
        if self.context.is_main:
            self.visualizer.log_validation(epoch, self.progress.total_iters, metrics)
            text = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(f"\nvalidation after epoch {epoch} ({len(self.val_loader)} {self.opt.val_phase} vertebrae): {text}")
