from __future__ import annotations

import torch
from torch import nn

from framework.algorithm import Algorithm
from framework.losses import task_losses
from framework.models import build_multitask


class TaskNetworks(nn.Module):
    """T separate networks; ``forward`` returns ``{task: logits}`` like a multi-task net."""

    def __init__(self, nets: dict[str, nn.Module]):
        super().__init__()
        self.nets = nn.ModuleDict(nets)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: net(x)[t] for t, net in self.nets.items()}


class SingleTask(Algorithm):
    def build_model(self, data_info) -> nn.Module:
        cfg = self.full_config.model
        return TaskNetworks({t: build_multitask(cfg, data_info, {t: n}) for t, n in data_info.tasks.items()})

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        return task_losses(model(batch["image"]), batch["labels"])
