"""The pix2pix-style dataset registry and the epoch-deterministic loader.

``--dataset_mode <name>`` selects the class ``<Name>Dataset`` in ``data/<name>_dataset.py`` (a
``torch.utils.data.Dataset`` with a static ``modify_commandline_options(parser, is_train)``).
:func:`create_dataset` wraps it in a :class:`DataLoader` over an :class:`EpochSampler`, which
shards it across ``torchrun`` ranks and makes every epoch's order and slice choice a function of
``(seed, epoch)`` only, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import importlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from util.distributed import main_rank_first, rank_and_size
from util.settings import FromOptions


def find_dataset_using_name(dataset_name: str) -> type:
    """The dataset class ``<Name>Dataset`` of module ``data.<name>_dataset`` (case-insensitive, '_' ignored)."""
    module_name = f"data.{dataset_name}_dataset"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(f"--dataset_mode {dataset_name!r}: no module {module_name}") from None
    target = dataset_name.replace("_", "").lower() + "dataset"
    for name, cls in vars(module).items():
        if name.lower() == target and isinstance(cls, type) and issubclass(cls, torch.utils.data.Dataset):
            return cls
    raise ValueError(f"--dataset_mode {dataset_name!r}: {module_name} defines no Dataset class named like {target}")


def get_option_setter(dataset_name: str) -> Callable[[argparse.ArgumentParser, bool], argparse.ArgumentParser]:
    """The dataset's ``modify_commandline_options(parser, is_train)``."""
    return find_dataset_using_name(dataset_name).modify_commandline_options


@dataclass(frozen=True)
class LoaderSettings(FromOptions):
    """How the loader batches and orders a dataset (docs/design.md, 'Settings and defaults').

    batch_size: items per batch (per process under ``torchrun``); num_threads: DataLoader worker processes
    (0: load in the main process); gpu_ids: ``--gpu_ids`` as parsed (pinned memory when it names a GPU);
    serial_batches: keep the dataset's order in the training phase instead of shuffling; seed: each epoch's
    order is seeded by ``(seed, epoch)`` (also the default of ``--seed``).
    """

    batch_size: int
    num_threads: int
    gpu_ids: Any
    serial_batches: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "num_threads", int(self.num_threads))
        object.__setattr__(self, "serial_batches", bool(self.serial_batches))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def pin_memory(self) -> bool:
        """Pin batches in page-locked memory (a GPU run with CUDA available)."""
        return torch.cuda.is_available() and bool(self.gpu_ids)


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` and can start part-way through an epoch.

    Each rank gets its shard of a permutation seeded by ``(seed, epoch)`` (the dataset seeds its
    per-item randomness the same way), so the data of an epoch do not depend on workers or resumes.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, num_replicas: int, rank: int, shuffle: bool,
                 seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's shard (resuming inside an epoch)."""
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, int(i)) for i in indices])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def collate_float32(items: list[dict]) -> dict:
    """``default_collate``, with Python floats batched as float32 (not float64) tensors."""
    batch = torch.utils.data.default_collate(items)
    return {k: v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.float64 else v for k, v in batch.items()}


class DatasetLoader:
    """pix2pix ``CustomDatasetDataLoader``: a dataset, its sampler and a ``DataLoader``."""

    def __init__(self, settings: LoaderSettings, dataset: torch.utils.data.Dataset, shuffle: bool) -> None:
        rank, world_size = rank_and_size()
        self.dataset = dataset
        self.batch_size = settings.batch_size
        self.sampler = EpochSampler(dataset, world_size, rank, shuffle, settings.seed)
        workers = settings.num_threads
        self.dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, sampler=self.sampler, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=settings.pin_memory,
            generator=torch.Generator().manual_seed(settings.seed), collate_fn=collate_float32,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select ``epoch``'s order and skip its first ``start_batch`` batches."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_batch * self.batch_size)

    def batches_per_epoch(self) -> int:
        """Batches this rank sees in a full epoch."""
        return -(-self.sampler.num_samples // self.batch_size)

    def load_data(self) -> DatasetLoader:
        return self

    def __len__(self) -> int:
        """Number of vertebrae in the dataset (all ranks)."""
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.dataloader)


def create_dataset(opt: argparse.Namespace, phase: str | None = None, shuffle: bool | None = None,
                   show_progress: bool = True, **dataset_kwargs) -> DatasetLoader:
    """Build the ``--dataset_mode`` dataset for ``phase`` (default ``opt.phase``) and its loader.

    Under ``torchrun`` rank 0 builds the crop cache first while the other ranks wait (on the Gloo
    control group, ``--dist_timeout``), then they reuse it; a failure on any rank stops every rank
    with that error. ``shuffle`` defaults to ``not opt.serial_batches`` in the training phase; rank 0 shows
    a progress bar while indexing unless ``show_progress`` is False.
    """
    phase = phase or opt.phase
    settings = LoaderSettings.from_options(opt)
    dataset_class = find_dataset_using_name(opt.dataset_mode)
    rank, _ = rank_and_size()

    def build() -> torch.utils.data.Dataset:
        with warnings.catch_warnings():
            if rank != 0:  # one copy of each data warning per job
                warnings.simplefilter("ignore")
            return dataset_class(opt, phase=phase, show_progress=rank == 0 and show_progress, **dataset_kwargs)

    dataset = main_rank_first(build)
    if shuffle is None:
        shuffle = phase == "train" and not settings.serial_batches
    return DatasetLoader(settings, dataset, shuffle)
