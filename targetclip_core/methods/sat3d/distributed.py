"""torch.distributed helpers of data-parallel SAT3D training (see train_sat3d): this process's rank
and the number of processes, the DistributedDataParallel wrapper of the mask module, and a
stop flag shared by all processes."""

from __future__ import annotations

import torch
from torch import nn


def distributed_rank_world() -> tuple[int, int]:
    """(rank, number of processes): (0, 1) without an initialised process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_ddp(module: nn.Module) -> nn.Module:
    """The mask module in DistributedDataParallel (on its GPU under CUDA), which averages the gradients."""
    from torch.nn.parallel import DistributedDataParallel

    device = module.logits.device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any of them."""
    t = torch.tensor([1.0 if flag else 0.0])
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
