"""Training one model on several processes (`torchrun`): the process group from torchrun's
environment (gloo on CPU, NCCL on CUDA), its teardown, and the few things every rank must agree
on (rank 0's run folder and stop decisions, SyncBatchNorm).

    torchrun --nproc_per_node=2 -m segsweep run experiments/quickstart.yaml

`segsweep.train.fit` reads rank and world size from the initialised process group; without one
(plain `segsweep run`) everything here is a no-op for a single rank.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, TypeVar

import torch
from torch import nn

from .errors import SegsweepError, SpecError

T = TypeVar("T")

TIMEOUT_ENV = "SEGSWEEP_DIST_TIMEOUT_S"
# A collective that waits longer than this fails instead of hanging (a rank stuck, not dead:
# a dead rank's closed connection fails its peers at once, and torchrun stops the others).
# Generous because rank 0 alone writes checkpoints and plots while the others wait.
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Ranks:
    """Where this process sits: global rank, world size, and its place on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SegsweepError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def timeout_s() -> float:
    """Seconds a collective may wait: `SEGSWEEP_DIST_TIMEOUT_S`, default 1800."""
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise SegsweepError(f"environment variable {TIMEOUT_ENV}={value!r}: expected a positive number of seconds")
    return seconds


def threads_per_process(local_world_size: int, cores: int | None = None) -> int:
    """max(1, C // N): the cores of this machine shared by its N processes."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def setup(device: str = "auto", threads: int | None = None) -> Ranks:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/PORT.

    One process (no torchrun, or `--nproc_per_node=1` on one node): nothing to join. Several:
    NCCL when training on CUDA (after `torch.cuda.set_device(LOCAL_RANK)`, one GPU per process),
    gloo on CPU; torch's intra-op threads become `threads` (the spec's `train.threads`) or the
    machine's cores divided among its processes (torchrun itself sets OMP_NUM_THREADS=1).
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise SegsweepError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start several processes "
                            "with torchrun, e.g. torchrun --nproc_per_node=2 -m segsweep run SPEC")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    torch.set_num_threads(threads or threads_per_process(local_world))
    cuda = device in ("cuda", "auto") and torch.cuda.is_available()  # 'cuda' without one: fit says so
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise SegsweepError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA "
                                "device(s); start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)  # NCCL and SyncBatchNorm use the current device
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return Ranks(rank, world, local_rank, local_world, backend)


def teardown() -> None:
    """Leave the process group (if any), so the process exits without NCCL/gloo warnings."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto", threads: int | None = None) -> Iterator[Ranks]:
    """`setup()` for the duration of a block, `teardown()` after it (also on errors and signals)."""
    ranks = setup(device, threads)
    try:
        yield ranks
    finally:
        teardown()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    """Where collective tensors live: NCCL only moves CUDA tensors, gloo CPU ones."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def main_value(value: T) -> T:
    """Rank 0's `value` on every rank (a picklable object); `value` itself without a group.

    Also a synchronisation point: no rank returns before rank 0 has got here.
    """
    if not _active():
        return value
    import torch.distributed as dist

    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)  # NCCL: through the current device (set in `setup`)
    return box[0]


def agree_stop(signum: int | None, stop: bool) -> tuple[int | None, bool]:
    """(a signal any rank received, whether any rank wants to stop): the same on every rank.

    Called at the same points on every rank (after each training step), so all ranks leave
    the epoch after the same step and take the same path afterwards.
    """
    if not _active():
        return signum, stop
    import torch.distributed as dist

    flags = torch.tensor([signum or 0, int(stop)], dtype=torch.int64, device=_device())
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    agreed = int(flags[0])
    return (agreed or None), bool(flags[1])


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's `module` (in place)."""
    if not _active():
        return
    import torch.distributed as dist

    for tensor in module.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            dist.broadcast(tensor, src=0)


def convert_sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """BatchNorm layers -> SyncBatchNorm (statistics over every rank's batch) when several ranks train.

    One rank already normalises over its whole batch: the model is returned unchanged. The
    state dict keeps its keys, so checkpoints load into a plain model. PyTorch implements
    SyncBatchNorm only for GPUs, hence the error on CPU.
    """
    if world_size <= 1:
        return model
    if device.type == "cpu":
        raise SpecError("train.sync_batchnorm: PyTorch's SyncBatchNorm runs only on GPUs, and this run trains "
                        f"{world_size} processes on CPU; set train.sync_batchnorm=false (each process then "
                        "normalises over its own batch) or train on CUDA")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
