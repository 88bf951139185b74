"""The strategy interface: how the model is wrapped, synchronised, stepped and saved.

The trainer talks only to this interface; it never asks which backend runs. A strategy is
constructed before anything else (it may start the process group) and owns the device.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Strategy:
    name = "base"
    #: True when ``save``/``load`` write one file per rank (every rank must call them).
    sharded_checkpoints = False

    def __init__(self, config: Any = None):
        self.config = config
        self.device = torch.device("cpu")

    # --- topology --------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    # --- model ---------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizers: dict[str, Any], algorithm: Any) -> tuple[nn.Module, dict]:
        """Move/wrap the model and optimizers; returns what the training step should call."""
        return model.to(self.device), optimizers

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def backward(self, loss: torch.Tensor, model: nn.Module) -> None:
        loss.backward()

    def no_sync(self, model: nn.Module, accumulating: bool):
        """Context skipping gradient all-reduce on micro-batches that do not step."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.unwrap(model).parameters(), max_norm)

    def optimizer_step(self, optimizer: Any, model: nn.Module) -> None:
        optimizer.step()

    def zero_grad(self, optimizer: Any, model: nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)

    def sync_owned_grads(self, module: nn.Module | None) -> None:
        """Average gradients of algorithm-owned parameters that the wrapper does not see."""
        if module is None or self.world_size == 1:
            return
        for p in module.parameters():
            if p.grad is not None:
                p.grad.div_(self.world_size)
                self.all_reduce(p.grad, "sum")

    # --- collectives ----------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    # --- checkpoints ----------------------------------------------------------------
    def save(self, state: dict, path: Path) -> None:
        """Atomically write a non-sharded checkpoint (rank 0 only)."""
        if not self.is_global_zero:
            return
        save_atomic(state, path)

    def load(self, path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    def teardown(self) -> None:
        pass


def save_atomic(state: dict, path: Path) -> None:
    """Temporary name, fsync, rename: a crash mid-save leaves the previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()
