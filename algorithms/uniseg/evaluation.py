"""What UniSeg reports: mIoU of every dataset in its own label space, and the label conflicts.

mIoU of dataset d (seen or unseen): the argmax is restricted to d's classes and scored over them.
A *conflict* is a super-class S (``digit``) that one dataset defines while another labels the
same things with finer classes (``digit_0``…``digit_9``), read from the manifest's
``extra.relations``. Its metrics look at the finer dataset's images through the eyes of a
dataset that defines S: the IoU of S there (argmax restricted to that dataset's classes; the
fine pixels are S's ground truth) and the mean predicted probability of S on those pixels. A
method that learned "S only in the style of the datasets that say S" fails both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from algorithms.uniseg.labels import LabelSpace, lookup, restricted_argmax
from framework.metrics.segmentation import MaskedMean, MeanIoU


@dataclass(frozen=True)
class Conflict:
    name: str  # the super-class S
    seen_in: int  # dataset (domain id) whose finer classes show S: its images are evaluated
    space_of: int  # a training dataset that defines S: its classes restrict the argmax
    target: int  # unified index of S
    parts: tuple[int, ...]  # unified indices of the finer classes


def find_conflicts(space: LabelSpace, relations: dict[str, list[str]]) -> list[Conflict]:
    """Every (S, dataset) where a training dataset lacks S but labels some of its finer classes."""
    out = []
    for sup, fine in sorted(relations.items()):
        owners = [d for d in space.training if sup in space.spaces[d]]
        if sup not in space.names or not owners:
            continue
        for d in space.training:
            parts = [n for n in fine if n in space.spaces[d]]
            if sup in space.spaces[d] or not parts:
                continue
            out.append(Conflict(sup, space.datasets.index(d), space.datasets.index(owners[0]),
                                space.names.index(sup), tuple(space.names.index(n) for n in parts)))
    names = [c.name for c in out]  # one super-class seen through several datasets: name both
    return [c if names.count(c.name) == 1 else replace(c, name=f"{c.name}@{space.datasets[c.seen_in]}")
            for c in out]

class SegEvaluator:
    """Metric objects keyed ``seg/...`` and their per-batch update."""

    def __init__(self, space: LabelSpace, conflicts: list[Conflict]):
        self.space, self.conflicts = space, conflicts
        self.class_mask = space.class_mask()
        self.local = space.local_index()

    def metrics(self) -> dict:
        out = {f"seg/miou_{d}": MeanIoU(self.space.eval_classes(d)) for d in self.space.datasets}
        for c in self.conflicts:
            out[f"seg/conflict_iou_{c.name}"] = MeanIoU(["other", c.name], scored=[c.name])
            out[f"seg/conflict_p_{c.name}"] = MaskedMean()
        return out

    def update(self, metrics: dict, logits: torch.Tensor, target: torch.Tensor, domain: torch.Tensor,
               mask: torch.Tensor, probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """``logits [B, K, H, W]``, ``target`` unified ids ``[B, H, W]`` (−1 void), ``domain [B]``, ``mask [B]``."""
        class_mask = self.class_mask.to(logits.device)
        local = self.local.to(logits.device)
        pred = restricted_argmax(logits, class_mask[domain.clamp(min=0)])
        for d, name in enumerate(self.space.datasets):
            rows = mask & (domain == d)
            if rows.any():
                metrics[f"seg/miou_{name}"].update(local[d][pred], lookup(local[d], target), rows)
        probs = None
        for c in self.conflicts:
            rows = mask & (domain == c.seen_in)
            if not rows.any():
                continue
            seen_as = restricted_argmax(logits, class_mask[c.space_of].expand(len(logits), -1)) == c.target
            positive = torch.isin(target, torch.tensor(c.parts, device=target.device))
            metrics[f"seg/conflict_iou_{c.name}"].update(seen_as.long(), torch.where(target >= 0, positive.long(), -1),
                                                         rows)
            probs = probabilities(logits) if probs is None else probs
            metrics[f"seg/conflict_p_{c.name}"].update(probs[:, c.target], positive, rows)
