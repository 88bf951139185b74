"""The continual network: backbone (+ neck) → growing head, the label of every output column,
and, from the second experience on, the frozen model of the previous one as a submodule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ContinualNet(nn.Module):
    """``forward(x)`` → logits over the classes seen so far, column k meaning label ``classes[k]``
    (classes arrive in any order). ``teacher`` is part of the module so that the checkpoint holds it
    and a resumed run distils from the same weights; it never trains and stays in eval mode."""

    def __init__(self, backbone: nn.Module, neck: int, head: nn.Module, flatten_from: tuple[int, ...] | None = None):
        """``flatten_from``: the last stage's ``(C, H, W)`` to flatten into the neck instead of the pooled
        features (a small conv net's global pooling loses where strokes are: 2 vs 3)."""
        super().__init__()
        self.backbone = backbone
        self.flatten = flatten_from is not None
        width = math.prod(flatten_from) if self.flatten else backbone.out_dim
        self.neck = nn.Sequential(nn.Linear(width, neck), nn.ReLU()) if neck else nn.Identity()
        self.head = head
        self.register_buffer("classes", torch.zeros(0, dtype=torch.long))
        self.teacher: ContinualNet | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            return self.neck(self.backbone.forward_features(x)[self.backbone.stage_names[-1]].flatten(1))
        return self.neck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def add_classes(self, labels: list[int]) -> list[int]:
        """Append head rows for the labels not seen yet; returns them."""
        seen = set(self.classes.tolist())
        new = [int(c) for c in labels if int(c) not in seen]
        if new:
            self.head.expand(len(new))
            self.classes = torch.cat([self.classes, torch.as_tensor(new, device=self.classes.device)])
        return new

    def freeze_teacher(self) -> None:
        """Make a frozen copy of the current model (without its own teacher) the distillation teacher."""
        self.teacher = None
        teacher = copy.deepcopy(self)
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()

    def columns(self, labels: torch.Tensor) -> torch.Tensor:
        """Output column of each label (-1 for a label without a column, and for -1)."""
        size = max(int(labels.max()) + 1 if labels.numel() else 0, int(self.classes.max()) + 1)
        lookup = torch.full((size,), -1, dtype=torch.long, device=labels.device)
        lookup[self.classes] = torch.arange(len(self.classes), device=labels.device)
        return torch.where(labels >= 0, lookup[labels.clamp(min=0)], labels.new_full((), -1))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self
