"""Registries for algorithms, strategies and datasets.

Registration must not import torch: the CLI loads every plugin to type-check the config
*before* the heavy imports, so a typo fails in well under a second. A plugin therefore
registers its config dataclass together with either its implementation class or an
``"module:Class"`` string that is imported only when the run is built.

Algorithm plugins, built-in or third-party, are found only through the entry-point group
``medley.algorithms`` (the built-ins are declared in this repository's ``pyproject.toml``), so
the engine never names a plugin and a third-party package needs no change here. Strategies and
datasets of the engine itself are imported directly; others come through ``medley.strategies``
and ``medley.datasets``. Importing an entry point's module runs the decorator.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

__all__ = [
    "Entry",
    "Registry",
    "RegistryError",
    "ALGORITHMS",
    "STRATEGIES",
    "DATASETS",
    "register_algorithm",
    "register_strategy",
    "register_dataset",
    "load_plugins",
]


class RegistryError(KeyError):
    """Unknown or duplicate registry name. ``str()`` gives the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry:
    name: str
    config: type  # dataclass holding the plugin's keys
    impl: Any  # the class/function itself, or "module:attr" resolved lazily
    source: str  # module that registered it (for error messages)

    def load(self) -> Any:
        if isinstance(self.impl, str):
            module, _, attr = self.impl.partition(":")
            self.impl = getattr(importlib.import_module(module), attr)
        return self.impl


class Registry:
    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, config: type | None = None, impl: Any = None, override: bool = False):
        """Decorate either the implementation (``config=`` given) or the config dataclass (``impl=`` given)."""

        def deco(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj) and impl is not None:
                cfg_cls, target = obj, impl
            else:
                cfg_cls, target = config, obj
            if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
                raise RegistryError(f"{self.kind} '{name}': a config dataclass is required (config=...)")
            if name in self._entries and not override:
                prev = self._entries[name]
                if prev.source != getattr(obj, "__module__", "?"):
                    raise RegistryError(
                        f"duplicate {self.kind} name '{name}': already registered by {prev.source}; "
                        f"pass override=True to replace it"
                    )
            self._entries[name] = Entry(name, cfg_cls, target, getattr(obj, "__module__", "?"))
            return obj

        return deco

    def get(self, name: str) -> Entry:
        load_plugins()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or (
                f"(none: plugins register through the entry-point group {self.group}; "
                f"after changing entry points reinstall the package, e.g. `pip install -e .`)"
            )
            raise RegistryError(f"unknown {self.kind} '{name}'; registered {self.kind}s: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries


ALGORITHMS = Registry("algorithm", "medley.algorithms")
STRATEGIES = Registry("strategy", "medley.strategies")
DATASETS = Registry("dataset", "medley.datasets")


def register_algorithm(name: str, *, config: type | None = None, impl: Any = None, override: bool = False) -> Callable:
    """``@register_algorithm("name", config=Cfg)`` on an Algorithm subclass, or
    ``@register_algorithm("name", impl="pkg.method:Cls")`` on its config dataclass (torch-free)."""
    return ALGORITHMS.register(name, config=config, impl=impl, override=override)


def register_strategy(name: str, *, config: type | None = None, impl: Any = None, override: bool = False) -> Callable:
    return STRATEGIES.register(name, config=config, impl=impl, override=override)


def register_dataset(name: str, *, config: type | None = None, impl: Any = None, override: bool = False) -> Callable:
    return DATASETS.register(name, config=config, impl=impl, override=override)


_loaded = False


def load_plugins(force: bool = False) -> None:
    """Import the engine's own strategies and datasets, then every entry point of the three
    groups (which is how algorithms, the built-in ones included, register)."""
    global _loaded
    if _loaded and not force:
        return
    _loaded = True
    for module in ("framework.strategies", "framework.data.builtin"):
        importlib.import_module(module)
    for reg in (ALGORITHMS, STRATEGIES, DATASETS):
        for ep in entry_points(group=reg.group):
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin must say which one
                raise RegistryError(f"entry point '{ep.name} = {ep.value}' in group {reg.group} failed: {exc}") from exc
            if ep.name not in reg._entries:
                raise RegistryError(
                    f"entry point '{ep.name} = {ep.value}' (group {reg.group}) registered no {reg.kind} "
                    f"named '{ep.name}'; decorate it with register_{reg.kind}('{ep.name}', ...)"
                )
