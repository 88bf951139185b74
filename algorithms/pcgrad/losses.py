"""PCGrad's projection, computed on the Gram matrix of the task gradients.

Projecting g_i onto the normal plane of a conflicting g_j (``g_i -= (g_i.g_j / |g_j|^2) g_j``)
keeps every projected gradient a linear combination of the original ones. Tracking the
coefficients needs only the dot products, so the summed PCGrad gradient is
``sum_t w_t g_t`` and one backward of ``sum_t w_t L_t`` applies it on the shared weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pcgrad_coefficients(gram: torch.Tensor, orders: Sequence[Sequence[int]]) -> torch.Tensor:
    """A[i] = coefficients of the projected g_i over the original gradients.

    ``gram[i, j] = g_i . g_j``; ``orders[i]``: the (shuffled) order in which g_i is projected
    against the other tasks' original gradients."""
    n = gram.shape[0]
    coeff = torch.eye(n, dtype=gram.dtype, device=gram.device)
    for i in range(n):
        for j in orders[i]:
            if j == i or gram[j, j] <= 0:
                continue
            dot = coeff[i] @ gram[:, j]
            if dot < 0:
                coeff[i, j] -= dot / gram[j, j]
    return coeff


def pcgrad_weights(gram: torch.Tensor, orders: Sequence[Sequence[int]]) -> torch.Tensor:
    """w with sum_i projected(g_i) = sum_t w_t g_t."""
    return pcgrad_coefficients(gram, orders).sum(0)


def count_conflicts(gram: torch.Tensor) -> int:
    """Task pairs whose gradients point against each other (negative dot product)."""
    upper = torch.triu(torch.ones_like(gram, dtype=torch.bool), diagonal=1)
    return int(((gram < 0) & upper).sum())
