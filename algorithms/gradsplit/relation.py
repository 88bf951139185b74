"""Where the relation matrix R comes from: explicit, a pairwise-transfer table, or a look-ahead.

R[g][t] = 1 lets task t's loss train group g (group g belongs to task g). The asymmetric
rules below read "does task j hurt task i?" into R[i][j]; the paper's own procedure is not
published, so these are the documented defaults (an explicit matrix, the pairwise table of
short two-task runs, the TAG-style look-ahead affinity measured during warm-up).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from algorithms.gradsplit.routing import check_relation

SOURCES = ("identity", "all_ones", "pairwise", "lookahead")


def initial_relation(cfg: Any, tasks: Sequence[str]) -> torch.Tensor:
    """R at the start of training (``lookahead`` starts from plain sharing and is set later)."""
    rel, n = cfg.relation, len(tasks)
    if isinstance(rel, str):
        if rel == "identity":
            return torch.eye(n)
        if rel in ("all_ones", "lookahead"):
            return torch.ones(n, n)
        if rel == "pairwise":
            if not cfg.relation_file:
                raise ValueError(
                    "algorithm.relation_file: relation=pairwise needs the table written by "
                    "`medley gradsplit-relations` (python -m algorithms.gradsplit.pairwise)"
                )
            table = load_table(cfg.relation_file)
            eps = cfg.pairwise_eps if cfg.pairwise_eps is not None else table.get("eps", 0.0)
            z = cfg.pairwise_z if cfg.pairwise_z is not None else table.get("z", 0.0)
            return pairwise_relation(table, tasks, eps, z)
        raise ValueError(f"algorithm.relation: '{rel}' is not one of {', '.join(SOURCES)} or a matrix")
    return check_relation(list(rel), tasks)


# --- pairwise transfer ----------------------------------------------------------------------
def pair_key(i: str, j: str) -> str:
    return "|".join(sorted((i, j)))


def pairwise_relation(table: dict, tasks: Sequence[str], eps: float = 0.0, z: float = 0.0) -> torch.Tensor:
    """R[i][j] = 0 iff task i trained together with j is worse than alone by more than
    ``eps + z * SE``, where the difference is taken per seed and SE is its standard error.

    ``table``: ``{"single": {task: metric}, "pair": {"a|b": {a: metric, b: metric}}}`` (higher
    is better); a metric is a number (one seed) or a list over seeds, paired by position (the
    table's runs of one seed share it). With one seed SE = 0: the plain rule ``pair >= single -
    eps``. One two-task run fills both R[i][j] and R[j][i]."""
    missing = [t for t in tasks if t not in table["single"]]
    if missing:
        raise ValueError(
            f"algorithm.relation_file: no single-task metric for {missing} (has {list(table['single'])})"
        )
    r = torch.eye(len(tasks))
    for a, i in enumerate(tasks):
        for b, j in enumerate(tasks):
            if a == b:
                continue
            pair = table["pair"].get(pair_key(i, j))
            if pair is None:
                raise ValueError(f"algorithm.relation_file: no two-task run for '{pair_key(i, j)}'")
            mean, se = paired_difference(pair[i], table["single"][i])
            r[a, b] = float(mean >= -(eps + z * se))
    return r


def paired_difference(with_other: Any, alone: Any) -> tuple[float, float]:
    """Mean and standard error of the per-seed differences (numbers or equal-length lists)."""
    x = with_other if isinstance(with_other, list) else [with_other]
    y = alone if isinstance(alone, list) else [alone]
    if len(x) != len(y):
        raise ValueError(f"algorithm.relation_file: {len(x)} seeds of a two-task run against {len(y)} single")
    d = [p - q for p, q in zip(x, y)]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in d) / (len(d) - 1)
    return mean, (var / len(d)) ** 0.5


def load_table(path: str | Path) -> dict:
    return json.loads(Path(path).expanduser().read_text())


# --- look-ahead affinity ----------------------------------------------------------------------
class LookaheadAffinity:
    """Z[i][j] = mean over measured steps of 1 - L_i(theta - eta g_j) / L_i(theta).

    ``theta`` are the shared (backbone) parameters and ``g_j`` task j's gradient on them. j's
    update helps or does not hurt i when Z[i][j] >= 0, which sets R[i][j] = 1. Not symmetric.
    A pair counts only on steps where both tasks have samples (a loss of exactly 0 = none)."""

    def __init__(self, n_tasks: int):
        self.total = torch.zeros(n_tasks, n_tasks, dtype=torch.float64)
        self.count = torch.zeros(n_tasks, n_tasks, dtype=torch.float64)

    def measure(
        self,
        losses: Sequence[torch.Tensor],
        params: list[torch.nn.Parameter],
        lr: float,
        evaluate: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]],
        names: list[str],
    ) -> torch.Tensor:
        """One step's Z from the per-task losses at theta; ``evaluate(overrides)`` returns every
        task's loss with the named parameters replaced."""
        n = len(losses)
        base = torch.stack([loss.detach().double().cpu() for loss in losses])
        present = base > 0
        z = torch.zeros(n, n, dtype=torch.float64)
        for j in range(n):
            if not present[j]:
                continue
            grads = torch.autograd.grad(losses[j], params, retain_graph=True, allow_unused=True)
            moved = {
                k: (p.detach() - lr * g if g is not None else p.detach())
                for k, p, g in zip(names, params, grads)
            }
            with torch.no_grad():
                after = torch.stack([v.detach().double().cpu() for v in evaluate(moved)])
            z[:, j] = torch.where(present, 1.0 - after / base.clamp_min(1e-12), 0.0)
        pair = (present[:, None] & present[None, :]).double()
        self.total += z * pair
        self.count += pair
        return z

    def mean(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The mean Z over measured steps (and ranks, with ``all_reduce`` summing a tensor)."""
        packed = torch.stack([self.total, self.count])
        if all_reduce is not None:
            packed = all_reduce(packed)
        return packed[0] / packed[1].clamp_min(1.0)

    @staticmethod
    def relation(z: torch.Tensor) -> torch.Tensor:
        r = (z >= 0).float()
        r.fill_diagonal_(1.0)
        return r

    def state_dict(self) -> dict:
        return {"total": self.total.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = state["total"].clone(), state["count"].clone()
