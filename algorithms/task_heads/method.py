"""Late branching: stages ``stem .. stage(N-1)`` are shared, the last stage is one copy per task.

The usual "task-specific branches" baseline: no gradient conflict in the last stage, at the
price of (T - 1) extra last stages in parameters and inference FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from framework.algorithm import Algorithm
from framework.losses import task_losses
from framework.models import build_backbone, make_head


class TaskBranchNet(nn.Module):
    def __init__(self, trunk: nn.Module, branches: dict[str, nn.Module], heads: dict[str, nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.branches = nn.ModuleDict(branches)
        self.heads = nn.ModuleDict(heads)
        self.shared = trunk.stage_names[:-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for name in self.shared:
            x = getattr(self.trunk, name)(x)
        return {t: self.heads[t](branch(x).mean(dim=(2, 3))) for t, branch in self.branches.items()}


class TaskHeads(Algorithm):
    def build_model(self, data_info) -> nn.Module:
        cfg = self.full_config.model
        channels = data_info.image_shape[0]
        trunk = build_backbone(cfg, channels)
        last = trunk.stage_names[-1]
        branches = {t: getattr(build_backbone(cfg, channels), last) for t in data_info.tasks}
        delattr(trunk, last)  # every task gets its own copy, freshly initialised
        heads = {t: make_head(trunk.out_dim, n, cfg.head_hidden) for t, n in data_info.tasks.items()}
        return TaskBranchNet(trunk, branches, heads)

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        return task_losses(model(batch["image"]), batch["labels"])
