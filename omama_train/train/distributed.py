"""This process's place in a training run, and the collectives that need no branch on it.

Launched by ``torchrun`` (``torchrun --nproc_per_node 2 -m omama_train.train ...`` or
``torchrun ... $(which omama) train ...``), a process finds ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``, joins the process group (NCCL on GPUs, gloo on CPUs) and picks its device.
In a single process every collective here returns its argument unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omama_train.devices import check_device, default_device


@dataclass
class Distributed:
    """This process's place in the run: rank, world size, device."""

    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(device: str | None, local_rank: int = 0):
    """The torch device of this rank: ``--device`` (or the default one) checked, and plain
    ``cuda`` made ``cuda:<local rank>`` so that each process of a torchrun has its GPU."""
    import torch

    device = check_device(default_device() if device in (None, "auto") else device)
    if device.startswith("cuda"):
        if device == "cuda":
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
    return torch.device(device)


def setup_distributed(device: str | None) -> Distributed:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Distributed(rank, world, local_rank, torch_device)


def barrier(ctx: Distributed) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def all_gather(ctx: Distributed, obj: Any) -> list[Any]:
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(ctx: Distributed, obj: Any) -> Any:
    if not ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_across(ctx: Distributed, values: Sequence[float]) -> list[float]:
    if not ctx.active:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()
