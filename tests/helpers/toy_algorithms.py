"""Test-only plugins: manual optimisation, an owned learnable parameter, an injected NaN."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from algorithms.equal_weight.method import EqualWeight
from framework import AlgorithmConfig, Capabilities, register_algorithm
from framework.losses import task_losses


@dataclass
class ToyManualConfig(AlgorithmConfig):
    name: str = "toy_manual"


@register_algorithm("toy_manual", config=ToyManualConfig, override=True)
class ToyManual(EqualWeight):
    """Drives backward and stepping itself: one backward and one step per task loss."""

    capabilities = Capabilities(manual_optimization=True)

    def training_step(self, model, batch, ctx):
        losses = task_losses(model(batch["image"]), batch["labels"])
        ctx.backward(sum(losses.values()))
        ctx.step("main")
        return {k: v.detach() for k, v in losses.items()}


@dataclass
class ToyOwnedConfig(AlgorithmConfig):
    name: str = "toy_owned"


class LogWeights(nn.Module):
    def __init__(self, tasks):
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(len(tasks)))


@register_algorithm("toy_owned", config=ToyOwnedConfig, override=True)
class ToyOwned(EqualWeight):
    """Uncertainty-style learned task weights: the algorithm owns a parameter."""

    def build_model(self, data_info):
        self.weights = LogWeights(list(data_info.tasks))
        return super().build_model(data_info)

    def owned_module(self):
        return getattr(self, "weights", None)

    def training_step(self, model, batch, ctx):
        losses = task_losses(model(batch["image"]), batch["labels"])
        lv = self.weights.log_var
        return {t: torch.exp(-lv[i]) * l + lv[i] for i, (t, l) in enumerate(losses.items())}


@dataclass
class ToyNanConfig(AlgorithmConfig):
    name: str = "toy_nan"
    nan_steps: list = field(default_factory=list)  # global steps whose 'right' loss is NaN


@register_algorithm("toy_nan", config=ToyNanConfig, override=True)
class ToyNan(EqualWeight):
    def training_step(self, model, batch, ctx):
        losses = task_losses(model(batch["image"]), batch["labels"])
        if ctx.global_step in (self.config.nan_steps or []):
            losses["right"] = losses["right"] * float("nan")
        return losses
