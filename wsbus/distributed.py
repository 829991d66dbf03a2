"""Data-parallel training helpers: process group set-up under ``torchrun``, ranks, devices, reductions.

Taught in ``book/06_joint_training.md``.

``torchrun --nproc_per_node=K -m wsbus train ...`` starts K processes and gives each the environment
variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` reads them and joins the process group (``nccl`` on CUDA, ``gloo`` on CPU);
without them it does nothing and the run is an ordinary single-process one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "default_device", "resolve_device", "model_device", "init_distributed", "dist_info",
           "is_main_process", "barrier", "all_reduce_mean", "all_reduce_sum", "cleanup_distributed"]

DeviceLike = Union[str, torch.device, None]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) job.

    Attributes
    ----------
    rank, world_size, local_rank : as set by ``torchrun`` (0, 1, 0 for a single process).
    backend : ``"gloo"``, ``"nccl"`` or None when no process group is in use.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        """True when gradients are averaged over more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes checkpoints, logs and the progress bar."""
        return self.rank == 0


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``. """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: DeviceLike = None, local_rank: int = 0) -> torch.device:
    """Turn ``device`` (None, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``) into a device.

    None means :func:`default_device`. A bare ``cuda`` becomes ``cuda:<local_rank>`` so that each process of
    a multi-GPU job uses its own GPU. Asking for CUDA on a machine without it, a GPU it does not have, or a name
    that is not a device is a ``ValueError`` saying so in one line.
    """
    try:
        dev = default_device() if device is None else torch.device(device)
    except (RuntimeError, TypeError) as exc:  # torch.device("gpu"): "Expected one of cpu, cuda, ..."
        raise ValueError(f"device {str(device)!r} is not a device name (cpu, cuda, cuda:1, ...): {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine (torch "
                             f"{torch.__version__}, built with {built}, sees no GPU); use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s), numbered from 0")
    return dev


def model_device(model: "torch.nn.Module", device: DeviceLike = None) -> torch.device:
    """``device`` when given, else the device of ``model``'s first parameter (CPU for a model without any)."""
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def dist_info() -> DistInfo:
    """The current process's :class:`DistInfo` (from the initialised process group, if any).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=_env_int("LOCAL_RANK", 0), backend=str(dist.get_backend()))
    return DistInfo()


def init_distributed(device: DeviceLike = None) -> tuple:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise do nothing.

    Parameters
    ----------
    device : the requested device; ``cuda`` selects ``cuda:<LOCAL_RANK>`` and the ``nccl`` backend,
        anything else the ``gloo`` backend.

    Returns
    -------
    (DistInfo, torch.device)
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return dist_info(), dev
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo(), dev
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set: launch with "
                               f"`torchrun --nproc_per_node=K -m wsbus train ...`")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend)
    return dist_info(), dev


def is_main_process() -> bool:
    """True on rank 0 (or without a process group). """
    return dist_info().is_main


def barrier() -> None:
    """Wait for every rank (no-op without a process group). """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (identity without a process group).
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place and return it (identity without a process group).
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def cleanup_distributed() -> None:
    """Leave the process group if one is initialised. """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
