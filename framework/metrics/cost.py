"""Inference cost of a model, for any method: parameters, FLOPs and peak activation memory of
one forward pass that produces every task's output.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies and
convolutions, 2 per multiply-add; element-wise ops are not counted). Peak activation memory
is the largest total size of tensors created during the forward and alive at the same time,
tracked at the dispatcher level; parameters, buffers and the input are not counted, nor are
a kernel's internal scratch buffers.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


class _LiveTensors(TorchDispatchMode):
    """Sums the bytes of storages created inside the mode while any tensor using them is alive."""

    def __init__(self, exclude: set[int]):
        super().__init__()
        self.exclude = exclude
        self.refs: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensor objects]
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.exclude or storage.nbytes() == 0:
            return
        entry = self.refs.get(key)
        if entry is None:
            entry = self.refs[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.refs[key]


@torch.no_grad()
def peak_activation_bytes(model: nn.Module, example: Any) -> int:
    """Peak bytes of live intermediate tensors during ``model(example)`` (no autograd graph)."""
    exclude = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    exclude |= {
        t.untyped_storage().data_ptr() for t in tree_flatten(example)[0] if isinstance(t, torch.Tensor)
    }
    tracker = _LiveTensors(exclude)
    with tracker:
        out = model(*example) if isinstance(example, tuple) else model(example)
    del out
    return tracker.peak


@torch.no_grad()
def forward_flops(model: nn.Module, example: Any) -> int:
    with FlopCounterMode(display=False) as counter:
        model(*example) if isinstance(example, tuple) else model(example)
    return int(counter.get_total_flops())


def inference_cost(model: nn.Module, example: Any) -> dict[str, float]:
    """``{params, flops, peak_activation_bytes}`` for one eval-mode forward of ``example``."""
    was_training = model.training
    model.eval()
    try:
        return {
            "params": count_parameters(model),
            "flops": forward_flops(model, example),
            "peak_activation_bytes": peak_activation_bytes(model, example),
        }
    finally:
        model.train(was_training)
