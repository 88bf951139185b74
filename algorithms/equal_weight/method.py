from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framework.algorithm import Algorithm
from framework.models import build_multitask


def task_losses(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy per task over labelled rows (label -1 = not labelled for that task)."""
    out = {}
    for task, logits in outputs.items():
        target = labels[task]
        keep = target >= 0
        # an all-unlabelled batch gives an exact zero that still touches the head (no DDP unused params)
        out[task] = F.cross_entropy(logits[keep], target[keep]) if keep.any() else logits.sum() * 0.0
    return out


class EqualWeight(Algorithm):
    """One shared backbone, one head per task, sum of task losses (the standard MTL baseline)."""

    def build_model(self, data_info) -> nn.Module:
        return build_multitask(self.full_config.model, data_info)

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        return task_losses(model(batch["image"]), batch["labels"])
