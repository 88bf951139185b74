from __future__ import annotations

import torch
from torch import nn

from framework.algorithm import Algorithm
from framework.losses import task_losses
from framework.models import build_multitask


class EqualWeight(Algorithm):
    """One shared backbone, one head per task, sum of task losses (the standard MTL baseline)."""

    def build_model(self, data_info) -> nn.Module:
        return build_multitask(self.full_config.model, data_info)

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        return task_losses(model(batch["image"]), batch["labels"])
