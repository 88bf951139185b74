"""Overrides → validated run config, outside a Hydra app.

``medley train`` composes through ``@hydra.main``; everything else that needs a config from
overrides (the Ray driver, plugin commands, benchmarks, tests) calls :func:`compose`, which
takes the same steps in the same order: load every plugin, register the schema, compose
``configs/train.yaml`` with the overrides, validate. One function, so a config composed here
is the one ``medley train`` would run with the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from framework.config import compose_overrides, register_schema, validate
from framework.registry import ALGORITHMS, DATASETS, STRATEGIES, load_plugins

__all__ = ["compose"]

_stored: tuple | None = None  # the registry contents whose schema Hydra's ConfigStore holds


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The validated config of ``medley train *overrides``.

    Raises ``ConfigError`` naming the offending key (torch is not imported on the way), and
    hydra's own errors for an unknown group or option.
    """
    load_plugins()
    _register_schema_when_changed()
    return validate(compose_overrides(list(overrides)))


def _register_schema_when_changed() -> None:
    """``register_schema`` costs most of a compose (it builds every plugin's structured config);
    run it again only when a plugin was registered or replaced since the last call."""
    global _stored
    now = tuple((reg.kind, name, reg.get(name).config)
                for reg in (ALGORITHMS, DATASETS, STRATEGIES) for name in reg.names())
    if now != _stored:
        register_schema()
        _stored = now
