from dataclasses import dataclass

from framework.config import AlgorithmConfig
from framework.registry import register_algorithm


@register_algorithm("equal_weight", impl="algorithms.equal_weight.method:EqualWeight")
@dataclass
class EqualWeightConfig(AlgorithmConfig):
    """Hard parameter sharing; the loss is the plain sum of the task losses."""

    name: str = "equal_weight"
