"""Multi-process data parallelism on PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node N -m diffkit train ...`` (or ``diffkit train --nproc N``) starts N
processes; :func:`setup` joins them (gloo on CPU, nccl on CUDA). Every rank builds the same global
batch (same data order, same noise and timesteps from the same generator) and trains on its own
contiguous shard; DDP averages the gradients, so N ranks with per-rank batch B train exactly like
one process with batch N x B (dropout aside). Only rank 0 writes checkpoints, logs and images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import DiffkitError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DISTRIBUTED_DEVICES = ("cpu", "cuda")  # gloo and nccl; mps has no process-group backend


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group that torchrun describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        # cuda:N: its allocations and pinned-memory copies go there
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type not in DISTRIBUTED_DEVICES:
        raise DiffkitError(f"distributed training needs device cpu (gloo) or cuda (nccl); {device.type} has no "
                           f"process-group backend: run one process or use device cpu")
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def shard(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes divisible by the world size)."""
    if not info.enabled:
        return batch
    n = batch.shape[0] // info.world_size
    return batch[info.rank * n:(info.rank + 1) * n]


def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's tensor (in rank order)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
