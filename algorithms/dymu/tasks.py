"""Per-task losses and metrics for dense (per-pixel) and image-level tasks.

Dense targets come from ``batch["dense"][task]`` (at the heads' output stride), image labels
from ``batch["labels"][task]``; -1 is "no label". Binary tasks listed as balanced (edges) weigh the positive class by
``pos_weight`` and the negative one by ``1 − pos_weight``, as BMTAS does for edges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from algorithms.dymu.anchor import TaskSpec
from framework.metrics.base import Metric


def discover_tasks(data_info, names: list | None) -> list[TaskSpec]:
    """The dataset's dense targets (else its label tasks), or the listed ``names`` of either kind."""
    dense = {k: len(v["classes"]) for k, v in (data_info.extra.get("dense") or {}).items()}
    labels = dict(data_info.tasks)
    if names is None:
        return [TaskSpec(k, n, True) for k, n in dense.items()] if dense else \
            [TaskSpec(k, n, False) for k, n in labels.items()]
    out = []
    for name in names:
        if name in dense:
            out.append(TaskSpec(name, dense[name], True))
        elif name in labels:
            out.append(TaskSpec(name, labels[name], False))
        else:
            raise ValueError(f"algorithm.tasks: '{name}' is not a task of dataset '{data_info.name}' "
                             f"(dense: {sorted(dense)}, labels: {sorted(labels)})")
    if len(out) < 2:
        raise ValueError(f"algorithm.tasks: {names} — DYMU needs at least two tasks")
    return out


def target(task: TaskSpec, batch: dict, stride: int = 1) -> torch.Tensor:
    """The task's labels; dense ones at ``1/stride`` of the image: the centre pixel of every
    stride×stride cell (thin edges stay thin, so the edge task keeps its difficulty)."""
    if not task.dense:
        return batch["labels"][task.name]
    full = batch["dense"][task.name]
    return full if stride == 1 else full[:, stride // 2::stride, stride // 2::stride]


def class_weights(task: TaskSpec, balanced: list, pos_weight: float, device) -> torch.Tensor | None:
    if task.name in balanced and task.classes == 2:
        return torch.tensor([1 - pos_weight, pos_weight], device=device)
    return None


def loss_sum(logits: torch.Tensor, tgt: torch.Tensor, weight: torch.Tensor | None,
             rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss sum, weight sum) over labelled entries of the kept ``rows``."""
    if rows is not None:
        logits, tgt = logits[rows], tgt[rows]
    keep = tgt >= 0
    safe = tgt.clamp_min(0)
    per = F.cross_entropy(logits.float(), safe, reduction="none")
    w = keep.to(per.dtype) if weight is None else weight[safe] * keep
    return (per * w).sum(), w.sum()


class LossMean(Metric):
    """The task's training loss over a whole split (weighted sum / weight sum)."""

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.float64))

    def update(self, total: torch.Tensor, count: torch.Tensor) -> None:
        self.total += total.double()
        self.count += count.double()

    def compute(self) -> float:
        return float(self.total / self.count) if self.count > 0 else math.nan


class Confusion(Metric):
    """Confusion matrix → pixel (or image) accuracy, mean IoU, and the positive class's F1 when binary."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes
        self.add_state("matrix", torch.zeros(classes, classes, dtype=torch.float64))

    def update(self, pred: torch.Tensor, tgt: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        if rows is not None:
            pred, tgt = pred[rows], tgt[rows]
        keep = tgt >= 0
        idx = tgt[keep] * self.classes + pred[keep]
        self.matrix += torch.bincount(idx.flatten(), minlength=self.classes ** 2).view(
            self.classes, self.classes).to(self.matrix)

    def compute(self) -> dict[str, float]:
        m = self.matrix
        total = m.sum()
        if total == 0:
            return {"acc": math.nan, "miou": math.nan} | ({"f1": math.nan} if self.classes == 2 else {})
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        present = m.sum(1) > 0
        out = {"acc": float(tp.sum() / total), "miou": float((tp[present] / union[present]).mean())}
        if self.classes == 2:
            out["f1"] = float(2 * tp[1] / (m[1].sum() + m[:, 1].sum())) if m[1].sum() + m[:, 1].sum() > 0 else 0.0
        return out


class Constant(Metric):
    """A value known before the pass (a tree's parameters or FLOPs), shown with the metrics."""

    def __init__(self, value: float):
        super().__init__()
        self.value = float(value)

    def update(self, *args, **kwargs) -> None:
        pass

    def compute(self) -> float:
        return self.value


class Uniformity(Metric):
    """μ_r = 1 − KL(L̂ ‖ 1/N), L̂_j = r_j ℓ_j / Σ_i r_i ℓ_i, over the split's normalised losses ℓ = w·L."""

    def __init__(self, pref: list[float], scales: list[float]):
        super().__init__()
        self.pref, self.scales = list(pref), list(scales)
        self.add_state("total", torch.zeros(len(pref), dtype=torch.float64))
        self.add_state("count", torch.zeros(len(pref), dtype=torch.float64))

    def update(self, index: int, total: torch.Tensor, count: torch.Tensor) -> None:
        self.total[index] += total.double()
        self.count[index] += count.double()

    def compute(self) -> float:
        if (self.count == 0).any():
            return math.nan
        from algorithms.dymu.pareto import uniformity

        losses = (self.total / self.count).tolist()
        return uniformity([s * v for s, v in zip(self.scales, losses)], self.pref)
