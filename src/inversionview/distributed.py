"""One training script for one process or many: ``torchrun --nproc_per_node N`` runs it as
DDP (NCCL on GPUs, gloo on CPU); without torchrun every call here is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_lead_process() -> bool:
    """Whether this process writes the run: rank 0 under torchrun, or the only process."""
    return int(os.environ.get("RANK", 0)) == 0


@dataclass
class World:
    rank: int = 0
    size: int = 1
    owns_group: bool = False  # we started the process group, so we end it

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``module`` itself alone, a DDP replica (gradients averaged every step) under torchrun."""
        if self.size == 1:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                         broadcast_buffers=False)

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (decisions that must agree: stop, lr, evaluate)."""
        if self.size == 1:
            return values
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def finish(self) -> None:
        if self.owns_group:
            dist.barrier()
            dist.destroy_process_group()


def setup() -> World:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size == 1:
        return World()
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), owns_group=True)
