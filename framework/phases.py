"""Phases as data: what an algorithm declares, and the step plan the trainer derives from it.

A run is a sequence of phases (UniSeg's two stages, DYMU's four, one experience each in
continual learning). Each phase has its own length, data selection, trainable parameters,
optimizers and LR schedule, and the evaluation sets run at its end. This module is torch-free:
phases are decided from the config alone, before any model or process group exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Phase:
    """One stage of training.

    Length: ``steps`` (optimizer steps) or ``share`` (a fraction of ``trainer.max_steps``); a
    phase with neither takes an equal part of what the others leave of ``trainer.max_steps``.
    ``steps=0`` is allowed: a phase that only runs its hooks (a statistics pass, an affinity
    measurement). ``data`` is handed to the data module (``data.phase_sources[data]`` restricts
    the training sources; default: the phase name). ``trainable``: parameter-name prefixes that
    train in this phase (``None``: all; the rest get ``requires_grad=False``). ``optim``: keys
    overriding ``optim.*`` for this phase's default optimizer and schedule (e.g. ``{"lr": 0.01}``).
    ``eval_sets``: evaluation sets (names of ``trainer.eval_sets``, of the algorithm's
    ``eval_sets()``, or manifest splits) evaluated when the phase ends.
    """

    name: str
    steps: int | None = None
    share: float | None = None
    data: str | None = None
    trainable: tuple[str, ...] | None = None
    optim: dict[str, Any] = field(default_factory=dict)
    eval_sets: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"phase name {self.name!r}: must be non-empty and contain no '/'")
        if self.steps is not None and self.share is not None:
            raise ValueError(f"phase '{self.name}': give steps or share, not both")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"phase '{self.name}': steps={self.steps} must be >= 0")
        if self.share is not None and not 0 <= self.share <= 1:
            raise ValueError(f"phase '{self.name}': share={self.share} must be in [0, 1]")
        if isinstance(self.trainable, str) or isinstance(self.eval_sets, str):
            raise ValueError(f"phase '{self.name}': trainable and eval_sets are tuples of names, not a string")


def as_phases(declared: list[Any]) -> list[Phase]:
    """Accept ``Phase`` objects or plain names (equal shares, the original behaviour)."""
    phases = [p if isinstance(p, Phase) else Phase(str(p)) for p in declared]
    if not phases:
        raise ValueError("an algorithm must declare at least one phase")
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names must be unique: {names}")
    return phases


@dataclass(frozen=True)
class PhasePlan:
    """Phases with their step boundaries: phase i trains steps ``[starts[i], ends[i])``."""

    phases: tuple[Phase, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.ends[-1]

    def index_at(self, step: int) -> int:
        """The phase a run at ``step`` is in: the first whose end is not yet passed."""
        for i, end in enumerate(self.ends):
            if step < end:
                return i
        return len(self.phases) - 1

    def length(self, i: int) -> int:
        return self.ends[i] - self.starts[i]


def plan(declared: list[Any], max_steps: int) -> PhasePlan:
    """Turn declared phases into step boundaries (``steps`` > ``share`` > an equal part of the rest)."""
    phases = as_phases(declared)
    lengths: list[int | None] = []
    for p in phases:
        if p.steps is not None:
            lengths.append(p.steps)
        elif p.share is not None:
            lengths.append(int(round(p.share * max_steps)))
        else:
            lengths.append(None)
    free = [i for i, n in enumerate(lengths) if n is None]
    if free:
        left = max(0, max_steps - sum(n for n in lengths if n is not None))
        for k, i in enumerate(free):  # the same split as before phases had lengths
            lengths[i] = left * (k + 1) // len(free) - left * k // len(free)
    starts, ends, at = [], [], 0
    for n in lengths:
        starts.append(at)
        at += int(n)
        ends.append(at)
    return PhasePlan(tuple(phases), tuple(starts), tuple(ends))
