"""Built-in datasets: each registers its prepare-time config here (torch-free)."""

from dataclasses import dataclass

from framework.config import DataConfig
from framework.registry import register_dataset


@dataclass
class PreparedDataConfig(DataConfig):
    """Keys every built-in dataset shares at prepare time (they select the prepared copy)."""

    seed: int = 0  # construction seed (pairs, shifts)
    min_shards: int = 8


@register_dataset("multimnist", impl="framework.data.builtin.multimnist:prepare")
@dataclass
class MultiMNISTConfig(PreparedDataConfig):
    name: str = "multimnist"
