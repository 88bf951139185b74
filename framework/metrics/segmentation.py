"""Segmentation metrics on the Metric protocol: a confusion matrix summed over ranks.

``MeanIoU``: IoU_k = TP / (TP + FP + FN) per class from the confusion matrix of the whole split;
the mean runs over the scored classes whose union is not empty (a class never present and never
predicted has no IoU). ``MaskedMean``: the mean of a per-element value over selected elements
(e.g. the mean predicted probability of a class on the pixels of another dataset's fine classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from framework.metrics.base import Metric


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[t, p]`` counts (float64) over elements with ``0 <= target < num_classes``; ``pred`` outside the
    range is an error."""
    keep = (target >= 0) & (target < num_classes)
    t, p = target[keep].long(), pred[keep].long()
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"confusion_matrix: predictions must lie in [0, {num_classes}), got [{p.min()}, {p.max()}]")
    flat = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes).double()


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of every class; NaN where the class is neither present nor predicted."""
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


class MeanIoU(Metric):
    """mIoU over ``class_names`` (or over ``scored``, a subset: e.g. the IoU of one class of a two-class
    map). Targets ``-1`` (void) and padding rows (``mask`` False) are ignored."""

    def __init__(self, class_names: Sequence[str], scored: Sequence[str] | None = None):
        super().__init__()
        self.class_names = list(class_names)
        unknown = [n for n in scored or () if n not in self.class_names]
        if unknown:
            raise ValueError(f"MeanIoU: scored classes {unknown} are not among {self.class_names}")
        self.scored = [self.class_names.index(n) for n in scored] if scored else list(range(len(self.class_names)))
        n = len(self.class_names)
        self.add_state("confusion", torch.zeros(n, n, dtype=torch.float64))

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """``pred``/``target``: class indices ``[B, ...]``; ``mask``: bool ``[B]`` of real rows."""
        if mask is not None:
            pred, target = pred[mask], target[mask]
        self.confusion += confusion_matrix(pred, target, len(self.class_names)).to(self.confusion.device)

    def per_class(self) -> dict[str, float]:
        iou = iou_per_class(self.confusion)
        return {self.class_names[i]: float(iou[i]) for i in self.scored}

    def compute(self) -> float:
        iou = iou_per_class(self.confusion)[self.scored]
        present = ~iou.isnan()
        return float(iou[present].mean()) if present.any() else float("nan")


class MaskedMean(Metric):
    """The mean of ``values`` over the elements where ``select`` is True, over the whole split."""

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.float64))

    def update(self, values: torch.Tensor, select: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if mask is not None:
            values, select = values[mask], select[mask]
        self.total += values[select].double().sum().to(self.total.device)
        self.count += select.sum().double().to(self.count.device)

    def compute(self) -> float:
        return float(self.total / self.count) if self.count > 0 else float("nan")
