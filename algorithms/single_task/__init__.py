from dataclasses import dataclass

from framework.config import AlgorithmConfig
from framework.registry import register_algorithm


@register_algorithm("single_task", impl="algorithms.single_task.method:SingleTask")
@dataclass
class SingleTaskConfig(AlgorithmConfig):
    """One independent network per task (T backbones): the reference multi-task methods compare to."""

    name: str = "single_task"
