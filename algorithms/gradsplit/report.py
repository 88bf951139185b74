"""Multi-task summary numbers: Δm relative to single-task, mean ± std over seeds, a text table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def delta_m(
    metrics: Mapping[str, float],
    single: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Δm = (1/T) Σ_t s_t (M_t - M_st,t) / M_st,t, in percent; s_t = +1 if higher is better, else -1
    (Vandenhende et al.'s multi-task performance, as used by the MTL benchmarks)."""
    tasks = list(single)
    total = 0.0
    for t in tasks:
        sign = 1.0 if (higher_is_better or {}).get(t, True) else -1.0
        total += sign * (metrics[t] - single[t]) / single[t]
    return 100.0 * total / len(tasks)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs are skipped."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
