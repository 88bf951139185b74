"""Distillation and the two readings of the paper's moving average ("Mov").

``param_smoothing`` (the reimplementation's reading, the default): after every optimizer step
``theta <- gamma * theta_before + (1 - gamma) * theta_after`` over the trainable parameters (buffers
untouched). With plain SGD this is exactly a step at ``(1 - gamma) * lr``; with Adam it damps each
step while the moments keep accumulating. ``ema_teacher`` (a mean-teacher reading): the
distillation teacher follows the student, ``teacher <- alpha * teacher + (1 - alpha) * student``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """LwF soft cross-entropy ``-sum_k softmax(t/T)_k log softmax(s/T)_k`` (mean over rows), over the
    teacher's classes: ``student`` holds the same columns, first."""
    t = F.softmax(teacher.detach().float() / temperature, dim=-1)
    return -(t * F.log_softmax(student[:, : teacher.shape[1]].float() / temperature, dim=-1)).sum(-1).mean()


def snapshot(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(parameter, copy of its value)`` for every trainable parameter, taken before a step."""
    return [(p, p.detach().clone()) for p in module.parameters() if p.requires_grad]


@torch.no_grad()
def smooth_(before: list[tuple[torch.Tensor, torch.Tensor]], gamma: float) -> None:
    """``theta <- gamma * theta_before + (1 - gamma) * theta`` in place, after the step."""
    for p, old in before:
        p.lerp_(old, gamma)


@torch.no_grad()
def ema_(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``teacher <- alpha * teacher + (1 - alpha) * student`` for every teacher parameter (matched by
    name: the student has the same ones plus the rows of new classes)."""
    own = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        p.lerp_(own[name].detach(), 1.0 - alpha)
