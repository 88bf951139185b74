"""PCGrad-style gradient projection baseline (torch-free registration)."""

from dataclasses import dataclass

from framework.config import AlgorithmConfig
from framework.registry import register_algorithm


@register_algorithm("pcgrad", impl="algorithms.pcgrad.method:PCGrad")
@dataclass
class PCGradConfig(AlgorithmConfig):
    """PCGrad (Yu et al., NeurIPS 2020): project away conflicting task gradients on shared weights."""

    name: str = "pcgrad"
    global_projection: bool = True  # project the rank-averaged task gradients (exact large-batch PCGrad)
