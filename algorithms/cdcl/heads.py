"""Classifier heads that grow by whole rows: one parameter chunk per experience, so adding
classes appends new tensors and never rewrites the old ones (their values, their optimizer
state in a later phase, their checkpoint keys)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MahalanobisHead(nn.Module):
    """Mahalanobis similarity classifier: per class c a centre ``mu_c`` (D) and a low-rank factor
    ``L_c`` (r x D); the metric ``M_c = L_c^T L_c`` is positive semi-definite by construction, so it
    needs no projection step. ``d_c(f) = (f - mu_c)^T M_c (f - mu_c) = ||L_c (f - mu_c)||^2`` and the
    logit is ``sign * d_c(f) / temperature``.

    Initialisation as in the reimplementation the spec follows: ``mu = 0``; ``L`` kaiming-uniform
    (a = 0) on the (C, r, D) tensor, whose fan-in r*D does not depend on C, so rows added later are
    drawn from the same distribution as the first ones.
    """

    def __init__(self, dim: int, rank: int, sign: int = 1, temperature: float = 1.0):
        super().__init__()
        self.dim, self.rank, self.sign, self.temperature = dim, rank, sign, temperature
        self.mu = nn.ParameterList()
        self.factor = nn.ParameterList()

    @property
    def num_classes(self) -> int:
        return sum(m.shape[0] for m in self.mu)

    def expand(self, n: int) -> None:
        """Append ``n`` classes (fresh rows); the existing rows stay the same tensors."""
        if n <= 0:
            return
        factor = torch.empty(n, self.rank, self.dim)
        bound = math.sqrt(6.0 / (self.rank * self.dim))  # kaiming_uniform_(a=0) with fan_in = r*D
        nn.init.uniform_(factor, -bound, bound)
        self.mu.append(nn.Parameter(torch.zeros(n, self.dim)))
        self.factor.append(nn.Parameter(factor))

    def distances(self, f: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` quadratic forms ``||L_c (f - mu_c)||^2``."""
        mu, factor = torch.cat(list(self.mu)), torch.cat(list(self.factor))
        diff = f[:, None, :] - mu[None]  # [B, C, D]
        return torch.einsum("bcd,crd->bcr", diff, factor).pow(2).sum(-1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.sign * self.distances(f) / self.temperature


class LinearHead(nn.Module):
    """A linear classifier that grows the same way (the baselines' head)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight = nn.ParameterList()
        self.bias = nn.ParameterList()

    @property
    def num_classes(self) -> int:
        return sum(w.shape[0] for w in self.weight)

    def expand(self, n: int) -> None:
        if n <= 0:
            return
        layer = nn.Linear(self.dim, n)  # nn.Linear's own initialisation
        self.weight.append(nn.Parameter(layer.weight.detach().clone()))
        self.bias.append(nn.Parameter(layer.bias.detach().clone()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f @ torch.cat(list(self.weight)).t() + torch.cat(list(self.bias))
