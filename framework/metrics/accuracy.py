from __future__ import annotations

import torch

from framework.metrics.base import Metric, masked


class Accuracy(Metric):
    """Top-1 accuracy over labelled rows (target -1 means 'not labelled for this task')."""

    def __init__(self):
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.float64))
        self.add_state("total", torch.zeros((), dtype=torch.float64))

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        pred, target = masked(mask, pred, target)
        keep = target >= 0
        self.correct += (pred[keep] == target[keep]).sum().double()
        self.total += keep.sum().double()

    def compute(self) -> float:
        return float(self.correct / self.total) if self.total > 0 else float("nan")
