"""Loss helpers shared by the multi-task methods (one home, so every baseline counts the same)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["task_losses"]


def task_losses(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy per task over labelled rows (label -1 = not labelled for that task).

    Args:
        outputs: task name -> logits ``[B, C_task]``.
        labels: task name -> int64 ``[B]``, -1 where the row carries no label for that task.

    Returns:
        task name -> scalar loss. A task with no labelled row gives an exact zero that still
        depends on its head, so DDP sees a gradient for every parameter.
    """
    out = {}
    for task, logits in outputs.items():
        target = labels[task]
        keep = target >= 0
        out[task] = F.cross_entropy(logits[keep], target[keep]) if keep.any() else logits.sum() * 0.0
    return out
