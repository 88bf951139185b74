"""The strategy interface: how the model is wrapped, synchronised, stepped and saved.

The trainer talks only to this interface; it never asks which backend runs. A strategy is
constructed before anything else (it may start the process group) and owns the device.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from framework.checkpoint import save_atomic


class Strategy:
    name = "base"
    #: True when ``save``/``load`` write one file per rank (every rank must call them).
    sharded_checkpoints = False
    #: False when ``setup`` cannot be called again to re-wrap a grown model at a phase boundary.
    supports_phases = True

    def __init__(self, config: Any = None, capabilities: Any = None, run_config: Any = None):
        self.config = config  # this strategy's typed config (strategy.*)
        self.capabilities = capabilities  # the algorithm's Capabilities (e.g. find_unused_parameters)
        self.run_config = run_config  # the whole resolved run config (read-only)
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

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics) before an evaluation or a
        checkpoint. Broadcast rather than average: DDP itself broadcasts rank 0's buffers before each
        forward, the checkpoint holds rank 0's, and a manual-optimization step that bypasses the
        wrapper's forward would otherwise leave ranks apart for the whole run."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for buf in self.unwrap(model).buffers():
            dist.broadcast(buf.data, src=0)

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
    def full_state_dict(self, model: nn.Module) -> dict:
        """Consolidated model weights on every rank (a sharding strategy gathers them)."""
        return self.unwrap(model).state_dict()

    def load_weights(self, model: nn.Module, state_dict: dict) -> None:
        self.unwrap(model).load_state_dict(state_dict)

    def save_checkpoint(self, path: Path, model: nn.Module, optimizers: dict[str, Any], state: dict) -> None:
        """Every rank calls this; here rank 0 writes one atomic, ``weights_only``-loadable file."""
        full = {**state, "format": "torch", "model": self.full_state_dict(model),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()}}
        self.save(full, path)

    def load_optimizers(self, optimizers: dict[str, Any], state: dict, path: Path) -> None:
        """Optimizer state from checkpoint ``path`` (``state`` is what ``load(path)`` returned)."""
        if state.get("format", "torch") != "torch":
            raise ValueError(f"checkpoint {path} was written by strategy '{state['format']}' and holds no "
                             f"optimizer state for strategy '{self.name}'; resume it with strategy="
                             f"{state['format']} or pass resume_weights_only=true")
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])

    def save(self, state: dict, path: Path) -> None:
        """Atomically write a non-sharded checkpoint (rank 0 only)."""
        if not self.is_global_zero:
            return
        save_atomic(state, path)

    def load(self, path: Path) -> dict:
        """The checkpoint file itself: plain tensors and containers, so ``weights_only=True``;
        a file that is not Medley's is refused with CheckpointError."""
        from framework.checkpoint import load_file

        return load_file(path)

    def teardown(self) -> None:
        pass
