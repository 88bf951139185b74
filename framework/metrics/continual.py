"""Continual-learning metrics from the phase × evaluation-set matrix (``eval_matrix.json``).

``a[t][j]`` is the accuracy after experience t on experience j's test rows (``None`` where it
was not evaluated, e.g. j > t): either one evaluation set per experience (set ``exp{j}``, metric
``digit/acc``) or one set with a metric per experience (set ``seen``, metric ``digit/acc_exp{j}``);
a group names both as patterns formatted with j. With T experiences:

* accuracy after experience t: ``A_t = mean_{j <= t} a[t][j]`` (every class seen so far, each
  experience weighted equally);
* final accuracy ``A_{T-1}``; average incremental accuracy ``mean_t A_t``;
* forgetting ``F = mean_{j < T-1} (max_{t < T-1} a[t][j] - a[T-1][j])`` (Chaudhry et al., 2018).

Torch-free: it reads the JSON document the trainer writes.
"""

from __future__ import annotations

import math
from typing import Any


def accuracy_matrix(doc: dict[str, Any], set_pattern: str, metric_pattern: str) -> list[list[float | None]]:
    """``a[t][j]``: metric ``metric_pattern.format(j)`` of set ``set_pattern.format(j)`` in the row of
    phase ``doc['phases'][t]``; one column per phase."""
    n, rows = len(doc["phases"]), []
    for phase in doc["phases"]:
        row = doc["matrix"].get(phase, {})
        rows.append([_value(row.get(set_pattern.format(j), {}).get(metric_pattern.format(j))) for j in range(n)])
    return rows


def _value(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def accuracy_after_each(a: list[list[float | None]]) -> list[float | None]:
    """``A_t``: mean over the experiences seen so far (j <= t) that have a value."""
    out = []
    for t, row in enumerate(a):
        vals = [v for v in row[: t + 1] if v is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def forgetting(a: list[list[float | None]]) -> float | None:
    """Mean drop from each old experience's best earlier accuracy to its final one (``None`` with
    fewer than two experiences)."""
    last = len(a) - 1
    drops = []
    for j in range(last):
        earlier = [a[t][j] for t in range(j, last) if a[t][j] is not None]
        if earlier and a[last][j] is not None:
            drops.append(max(earlier) - a[last][j])
    return sum(drops) / len(drops) if drops else None


def summarize(doc: dict[str, Any], groups: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Per group (``{"seen": ("seen", "digit/acc_exp{}")}`` or ``{"seen": ("exp{}", "digit/acc")}``):
    the matrix, ``acc_after`` (A_t per experience), ``final_acc``, ``avg_acc`` (average incremental
    accuracy) and ``forgetting``. Groups without any value in the document are left out."""
    out: dict[str, Any] = {"phases": list(doc["phases"])}
    for group, (set_pattern, metric_pattern) in groups.items():
        a = accuracy_matrix(doc, set_pattern, metric_pattern)
        if all(v is None for row in a for v in row):
            continue
        after = accuracy_after_each(a)
        known = [v for v in after if v is not None]
        out[group] = {"set": set_pattern, "metric": metric_pattern, "matrix": a, "acc_after": after,
                      "final_acc": after[-1] if after else None,
                      "avg_acc": sum(known) / len(known) if known else None, "forgetting": forgetting(a)}
    return out


def flat(summary: dict[str, Any], prefix: str = "continual") -> dict[str, float]:
    """``{prefix/group/final_acc|avg_acc|forgetting: value}`` for the scalar results."""
    out = {}
    for group, res in summary.items():
        if isinstance(res, dict):
            for key in ("final_acc", "avg_acc", "forgetting"):
                if res.get(key) is not None:
                    out[f"{prefix}/{group}/{key}"] = float(res[key])
    return out
