"""What every multi-process strategy shares: topology and collectives over ``torch.distributed``.

The process group is started by the concrete strategy (Accelerate for DDP, DeepSpeed for ZeRO)
or was already started by the launcher (Ray Train); either way the collectives below are plain
``torch.distributed`` calls with a bounded timeout, so a rank that stops answering fails the run
instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import torch
import torch.distributed as dist

from framework.strategies.base import Strategy

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM"}


class ProcessGroupStrategy(Strategy):
    """Base of ``ddp`` and ``deepspeed``: one process per device, a global process group."""

    #: True when this strategy started the process group (and so may destroy it)
    owns_process_group = False

    def _backend(self) -> str:
        backend = getattr(self.config, "backend", "auto")
        if backend == "auto":
            return "nccl" if torch.cuda.is_available() else "gloo"
        return backend

    def _timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=getattr(self.config, "timeout_s", 1800))

    def _pick_device(self, local_rank: int) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")

    # --- topology --------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else 1

    # --- collectives ----------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        # gloo reduces CPU tensors, nccl device tensors: move there and back
        work = tensor.to(self.device) if self._backend() == "nccl" else tensor
        dist.all_reduce(work, op=getattr(dist.ReduceOp, _OPS[op]))
        if op == "mean":
            work = work / self.world_size
        if work is not tensor:
            tensor.copy_(work)
            return tensor
        return work

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def teardown(self) -> None:
        """Destroy the process group if this strategy started it (Ray's, for one, is not ours)."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def ensure_rendezvous_env() -> None:
    """A plain ``python`` run of a distributed strategy becomes a world of one.

    torchrun, accelerate, deepspeed and Ray set these variables; without them DeepSpeed falls
    back to MPI discovery and Accelerate to no process group at all.
    """
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
