"""Named evaluation sets and the phase × set matrix written to the run directory.

A set is a manifest split, optionally restricted to rows whose labels (or attributes) take
given values: "the classes of experience 1", "the unseen domain", "val". The trainer evaluates
a phase's sets when the phase ends; ``ctx.evaluate(name)`` runs one on demand. Metrics are
named ``{set}/{task}/{metric}`` like split metrics, and ``eval_matrix.json`` holds
``matrix[phase][set] = {metric: value}``, the table continual learning reads for accuracy,
forgetting and transfer.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EvalSet:
    """``split`` rows whose ``select[key]`` is one of the listed values; ``key`` is a task (its label), an
    attribute, or a per-row id the batch carries (``domain``, ``source``, ``person``)."""

    name: str
    split: str
    select: dict[str, tuple] = field(default_factory=dict)


def resolve(name: str, algorithm_sets: list[EvalSet], config_sets: Any, splits: list[str]) -> EvalSet:
    """The algorithm's sets first, then ``trainer.eval_sets``, then a plain manifest split."""
    for s in algorithm_sets:
        if s.name == name:
            return s
    if config_sets and name in config_sets:
        spec = config_sets[name]
        split = spec.get("split", name)
        select = {k: tuple(v) for k, v in (spec.get("select") or {}).items()}
        return EvalSet(name, split, select)
    if name in splits:
        return EvalSet(name, name)
    known = sorted({s.name for s in algorithm_sets} | set(config_sets or {}) | set(splits))
    raise KeyError(f"evaluation set '{name}': not an algorithm set, a trainer.eval_sets entry or a split "
                   f"(known: {', '.join(known)})")


def selection_mask(batch: dict, select: dict[str, tuple]):
    """Boolean row mask of ``batch`` for ``select`` (all conditions hold), combined with ``batch['mask']``."""
    import torch

    ref = batch["image"] if "image" in batch else next(v for v in batch.values() if torch.is_tensor(v))
    keep = batch.get("mask", torch.ones(len(ref), dtype=torch.bool, device=ref.device)).bool()
    for key, values in select.items():
        column = batch.get("labels", {}).get(key)
        if column is None:
            column = batch.get("attrs", {}).get(key)
        if column is None and key in ("domain", "source", "person"):
            column = batch.get(key)
        if column is None:
            raise KeyError(f"evaluation set selects on '{key}', which is neither a task nor an attribute of the "
                           f"batch (tasks: {sorted(batch.get('labels', {}))}, attributes: "
                           f"{sorted(batch.get('attrs', {}))}, ids: domain, source, person where present)")
        allowed = torch.as_tensor(list(values), device=column.device, dtype=column.dtype)
        keep = keep & torch.isin(column, allowed)
    return keep


class EvalMatrix:
    """``phase → set → metrics``; saved atomically by rank 0 after every phase's evaluation."""

    def __init__(self, state: dict | None = None):
        self.rows: dict[str, dict[str, dict[str, float]]] = dict(state or {})

    def add(self, phase: str, set_name: str, metrics: dict[str, float]) -> None:
        prefix = f"{set_name}/"  # NaN (a metric with no rows yet) is stored as None: valid JSON
        self.rows.setdefault(phase, {})[set_name] = {k[len(prefix):] if k.startswith(prefix) else k:
                                                     (v if math.isfinite(v) else None) for k, v in metrics.items()}

    def state_dict(self) -> dict:
        return {p: {s: dict(m) for s, m in sets.items()} for p, sets in self.rows.items()}

    def write(self, path: Path, phases: list[str]) -> None:
        sets = list(dict.fromkeys(s for row in self.rows.values() for s in row))
        doc = {"phases": [p for p in phases if p in self.rows], "sets": sets, "matrix": self.state_dict()}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
