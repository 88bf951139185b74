"""Tiny worker used by the harness self-test (module-level so that spawn can pickle it)."""

import torch
import torch.distributed as dist


def sum_ranks(rank: int, world_size: int) -> float:
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return float(t)
