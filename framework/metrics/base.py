"""The metric protocol: accumulate reducible state over a whole split, then compute.

State tensors are declared with how they combine across ranks — ``sum`` (counts,
confusion matrices, histograms) or ``cat`` (scores for ROC curves) — so a metric computed
at any world size equals the single-process value on the same samples.
"""

from __future__ import annotations

from typing import Any

import torch


class Metric:
    def __init__(self):
        self._reductions: dict[str, str] = {}

    def add_state(self, name: str, default: torch.Tensor, reduce: str = "sum") -> None:
        assert reduce in ("sum", "cat"), reduce
        self._reductions[name] = reduce
        setattr(self, name, default.clone())

    def to(self, device: Any) -> "Metric":
        """Keep state beside the predictions (and on the device NCCL reduces from)."""
        for name in self._reductions:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def compute(self) -> float | dict[str, float]:  # pragma: no cover - protocol
        raise NotImplementedError

    def reduce(self, strategy: Any) -> None:
        """Combine state across ranks in place (call once, before ``compute``)."""
        if strategy is None or strategy.world_size == 1:
            return
        for name, how in self._reductions.items():
            value = getattr(self, name)
            if how == "sum":
                setattr(self, name, strategy.all_reduce(value.clone(), "sum"))
            else:
                parts = strategy.all_gather_object(value.cpu())
                setattr(self, name, torch.cat(parts))


def masked(mask: torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop padded rows (``mask`` False) and rows whose target is -1 (unlabelled)."""
    if mask is None:
        return tensors
    return tuple(t[mask] for t in tensors)
