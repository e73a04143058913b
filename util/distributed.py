"""Processes and devices: the GPU of this process, the ``torchrun`` process group, collectives that cannot hang.

``--gpu_ids`` (pix2pix style):

- ``auto`` (default): one GPU per process (``cuda:LOCAL_RANK`` under ``torchrun``, ``cuda:0`` alone)
  when CUDA is available, else the CPU;
- ``-1``: the CPU;
- ``0`` / ``1`` / ``0,1``: these GPUs, one per ``torchrun`` rank of the node (rank ``LOCAL_RANK`` takes the
  ``LOCAL_RANK``-th id). Naming fewer GPUs than ranks, a GPU that does not exist, CUDA when it is not
  available, or several GPUs for a single process (without ``torchrun``) is a one-line ``ValueError``.

The chosen GPU is made the current CUDA device before anything touches CUDA, so ``--gpu_ids 1`` never
opens a context on GPU 0. Under ``torchrun`` every process joins the default group (NCCL on GPU, Gloo on
CPU) and a second, CPU-only Gloo "control" group with a long timeout (``--dist_timeout``). The control
group carries everything that may wait long or that must not depend on the GPU: the agreement that a
phase succeeded on every rank (:func:`all_ranks_succeed`, :func:`main_rank_first`), summaries and RNG
states (:func:`gather_objects`). A failure on one rank is raised, with its message, on every rank.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

GPU_IDS_AUTO = "auto"
DEFAULT_TIMEOUT_MIN = 240.0
T = TypeVar("T")

_control_group: Any = None


class RankFailure(RuntimeError):
    """Another rank failed and its exception could not be sent whole (only its message)."""


@dataclass(frozen=True)
class LaunchEnvironment:
    """What ``torchrun`` tells this process (all 0/1 without torchrun)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_environment() -> LaunchEnvironment:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` from the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return LaunchEnvironment(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")),
                             int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))))


def parse_gpu_ids(gpu_ids: str | int | list[int] | tuple[int, ...] | None) -> list[int]:
    """``"0,1"`` / ``"-1"`` / ``[0]`` / ``"auto"`` -> GPU ids of this node's ranks (empty = CPU).

    ``auto`` becomes one id per rank of the node (``0 .. LOCAL_WORLD_SIZE-1``) when CUDA is available,
    else the CPU. Negative ids mean the CPU.
    """
    if gpu_ids is None or (isinstance(gpu_ids, str) and gpu_ids.strip().lower() == GPU_IDS_AUTO):
        return list(range(launch_environment().local_world_size)) if torch.cuda.is_available() else []
    if isinstance(gpu_ids, int):
        gpu_ids = [gpu_ids]
    if isinstance(gpu_ids, str):
        try:
            gpu_ids = [int(tok) for tok in gpu_ids.split(",") if tok.strip()]
        except ValueError:
            raise ValueError(f"--gpu_ids {gpu_ids!r}: expected auto, -1 or comma-separated GPU ids "
                             "such as 0,1") from None
    return [int(i) for i in gpu_ids if int(i) >= 0]


def gpu_for_this_process(ids: list[int], launch: LaunchEnvironment, cuda_available: bool, device_count: int) -> int:
    """The GPU id of this process among ``ids`` (non-empty); one-line ``ValueError`` when that cannot work."""
    named = ",".join(map(str, ids))
    if not cuda_available:
        raise ValueError(f"--gpu_ids {named}: CUDA is not available (torch {torch.__version__}, no usable GPU "
                         "or driver); pass --gpu_ids -1 for the CPU")
    if launch.world_size == 1 and len(ids) > 1:
        raise ValueError(f"--gpu_ids {named} names {len(ids)} GPUs but this is a single process: start one process "
                         f"per GPU with 'torchrun --nproc_per_node {len(ids)} ...', or name one GPU")
    if launch.local_rank >= len(ids):
        raise ValueError(f"--gpu_ids {named} names {len(ids)} GPU(s) for {launch.local_world_size} torchrun ranks on "
                         f"this node: give one id per rank (e.g. --gpu_ids "
                         f"{','.join(map(str, range(launch.local_world_size)))}) or --gpu_ids auto")
    gpu = ids[launch.local_rank]
    if gpu >= device_count:
        raise ValueError(f"--gpu_ids {named}: GPU {gpu} does not exist (CUDA sees {device_count} device(s))")
    return gpu


def resolve_device(gpu_ids: str | int | list[int] | tuple[int, ...] | None = "-1") -> torch.device:
    """This process's device for ``--gpu_ids`` (see the module docstring); a GPU becomes the current CUDA device."""
    ids = parse_gpu_ids(gpu_ids)
    if not ids:
        return torch.device("cpu")
    gpu = gpu_for_this_process(ids, launch_environment(), torch.cuda.is_available(), torch.cuda.device_count())
    torch.cuda.set_device(gpu)
    return torch.device("cuda", gpu)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(gpu_ids: Any, device_collectives: bool = True,
                      timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistributedContext:
    """Pick this process's device and, under ``torchrun``, join the process groups.

    The default group is NCCL when the device is a GPU and ``device_collectives`` (DDP training needs
    it), else Gloo; the control group is always Gloo with a ``timeout_min`` minutes timeout.
    """
    global _control_group
    launch = launch_environment()
    device = resolve_device(gpu_ids)
    if launch.world_size > 1 and not dist.is_initialized():
        timeout = timedelta(minutes=timeout_min)
        if device.type == "cuda" and device_collectives:
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
        _control_group = dist.new_group(backend="gloo", timeout=timeout)
    rank, world_size = rank_and_size()
    return DistributedContext(rank, world_size, device)


def teardown_distributed() -> None:
    """Leave the process groups (no-op outside ``torchrun``)."""
    global _control_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the process group, else of ``torchrun``'s environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    launch = launch_environment()
    return launch.rank, launch.world_size


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def control_group() -> Any:
    """The CPU Gloo group for control traffic (the default group when it was created elsewhere)."""
    return _control_group


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order, over the Gloo control group (``[obj]`` outside torchrun)."""
    if not _joined():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=control_group())
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of a CPU tensor over the ranks (over the Gloo control group; the tensor itself outside torchrun)."""
    if not _joined():
        return tensor
    summed = tensor.detach().cpu().clone()
    dist.all_reduce(summed, group=control_group())
    return summed


def _sendable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to be raised on the other ranks), else a :class:`RankFailure`."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any unpicklable exception is sent as its message
        return RankFailure(f"{type(error).__name__}: {error}")


def agree(error: BaseException | None) -> None:
    """Every rank reports whether its phase failed; if any did, every rank raises the first failure.

    A rank raises its own exception; the others raise the failing rank's exception object (same type and
    message, so each rank handles it the same way). Outside ``torchrun`` only re-raises ``error``.
    """
    reports = gather_objects(None if error is None else _sendable(error))
    failures = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if error is not None:
        raise error
    if failures:
        raise failures[0][1]


@contextlib.contextmanager
def all_ranks_succeed() -> Iterator[None]:
    """Run a phase on every rank; it ends on every rank with the first failure's exception if one rank fails.

    A barrier every rank reaches (on success or failure), so no rank waits forever for a failed one.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every failure must be reported to the other ranks
        agree(err)
    else:
        agree(None)


def main_rank_first(build: Callable[[], T]) -> T:
    """``build()`` on rank 0 first (e.g. to fill a cache), then on the other ranks; the result of this rank.

    A failure on rank 0 is raised on every rank before the others start; a failure on another rank is
    raised on every rank too.
    """
    rank, _ = rank_and_size()
    if not _joined():
        return build()
    result: list[T] = []
    with all_ranks_succeed():
        if rank == 0:
            result.append(build())
    with all_ranks_succeed():
        if rank != 0:
            result.append(build())
    return result[0]
