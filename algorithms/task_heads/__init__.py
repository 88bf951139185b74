"""Task-specific last stages: a shared trunk with one copy of the last stage per task."""

from dataclasses import dataclass

from framework.config import AlgorithmConfig
from framework.registry import register_algorithm


@register_algorithm("task_heads", impl="algorithms.task_heads.method:TaskHeads")
@dataclass
class TaskHeadsConfig(AlgorithmConfig):
    """Shared trunk, one last backbone stage per task (late branching); sum of task losses."""

    name: str = "task_heads"
