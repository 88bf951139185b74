"""Medley's engine. Importing this package is torch-free (plugins register cheaply)."""

from framework.algorithm import Algorithm, Capabilities
from framework.config import AlgorithmConfig, DataConfig, StrategyConfig
from framework.evalsets import EvalSet
from framework.phases import Phase
from framework.registry import register_algorithm, register_dataset, register_strategy

__all__ = [
    "Algorithm",
    "AlgorithmConfig",
    "Capabilities",
    "DataConfig",
    "EvalSet",
    "Phase",
    "StrategyConfig",
    "register_algorithm",
    "register_dataset",
    "register_strategy",
]
