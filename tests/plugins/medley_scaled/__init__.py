"""A third-party algorithm package, exposed to Medley only through its entry point
(``[medley.algorithms] scaled_sum = medley_scaled``). Not importable from the repo's test tree."""

from dataclasses import dataclass

import torch.nn.functional as F

from framework import Algorithm, AlgorithmConfig, register_algorithm
from framework.models import build_multitask


@dataclass
class ScaledSumConfig(AlgorithmConfig):
    name: str = "scaled_sum"
    scale: float = 1.0


@register_algorithm("scaled_sum", config=ScaledSumConfig)
class ScaledSum(Algorithm):
    def build_model(self, data_info):
        return build_multitask(self.full_config.model, data_info)

    def training_step(self, model, batch, ctx):
        out = model(batch["image"])
        return {t: self.config.scale * F.cross_entropy(out[t], batch["labels"][t]) for t in out}
