"""Built-in strategies (registration is torch-free; implementations load on use)."""

from dataclasses import dataclass

from framework.config import StrategyConfig
from framework.registry import register_strategy


@register_strategy("single", impl="framework.strategies.single:SingleDeviceStrategy")
@dataclass
class SingleConfig(StrategyConfig):
    name: str = "single"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
