"""Controllability metrics over preferences: uniformity and hypervolume in loss space (lower is better)."""

from __future__ import annotations

import itertools
import math

import numpy as np


def uniformity(losses, pref) -> float:
    """μ_r = 1 − KL(L̂ ‖ 1/N) with L̂_j = r_j L_j / Σ_i r_i L_i (EPO). 1 when r_j L_j is constant
    (losses inversely proportional to the preference); the minimum is 1 − log N."""
    weighted = np.asarray(pref, dtype=float) * np.asarray(losses, dtype=float)
    share = weighted / weighted.sum()
    n = len(share)
    kl = sum(p * math.log(p * n) for p in share if p > 0)
    return 1.0 - kl


def hypervolume(points, reference) -> float:
    """Lebesgue measure of {a : ∃ b ∈ points, b ⪯ a ⪯ reference}, exactly, by the grid of the points'
    coordinates (fine for a few dozen points in ≤ 4 dimensions). Points beyond the reference in
    some coordinate add only their part inside the box."""
    ref = np.asarray(reference, dtype=float)
    pts = np.minimum(np.asarray(points, dtype=float).reshape(-1, len(ref)), ref)
    if len(pts) == 0:
        return 0.0
    axes = [np.unique(np.append(pts[:, d], ref[d])) for d in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        low = np.array([axes[d][i] for d, i in enumerate(cell)])
        if (pts <= low).all(axis=1).any():
            total += float(np.prod([axes[d][i + 1] - axes[d][i] for d, i in enumerate(cell)]))
    return total


def simplex_preferences(n_tasks: int, count: int, seed: int) -> np.ndarray:
    """``count`` preferences drawn uniformly from the simplex (Dirichlet(1)), reproducible by seed."""
    return np.random.default_rng(seed).dirichlet(np.ones(n_tasks), size=count)
