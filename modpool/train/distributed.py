"""Data-parallel training with PyTorch's own engine (torchrun + DistributedDataParallel).

Under `torchrun --nproc-per-node N -m modpool finetune ...` every process trains the same
module on its share of each global batch; DDP averages the gradients (NCCL on GPUs, gloo
on CPU), so every rank takes the same optimizer step and the result is what one process
with the same global batch would compute. Only rank 0 writes to the pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


_world: World | None = None


def world(device: str = "auto") -> World:
    """The process group torchrun describes in the environment (initialised once)."""
    global _world
    if _world is not None:
        return _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _world = World()
        return _world
    use_cuda = torch.cuda.is_available() and device != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    _world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    return _world


def device_for(world_: World, device: str) -> str:
    """Each rank drives its own GPU."""
    if world_.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world_.local_rank}"
    return device


def shard(count: int, world_: World, accumulate: int) -> list[torch.Tensor]:
    """This rank's micro-batches: positions in the global batch."""
    mine = torch.arange(count).tensor_split(world_.size)[world_.rank]
    return [part for part in mine.tensor_split(accumulate) if len(part)]
