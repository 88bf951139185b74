"""The two hypernetworks, Gumbel-softmax sampling, its temperature schedule and the (r, c) draws.

Both embed the control as ``p = Σ_i r_i e_i + c·e_c`` (learned ``e``). The edge hypernetwork
maps ``p`` to per-layer parent logits (row ``j`` of layer ``l``: child ``(l, j)``'s parents); the
weight hypernetwork maps its own ``p`` to per-node shifts of the normalisation's affine
parameters, from heads initialised at zero so that training starts from the anchor.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def mlp(width_in: int, hidden: int, layers: int) -> nn.Sequential:
    mods, width = [], width_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*mods)


class ControlEmbedding(nn.Module):
    """``p = Σ_i r_i e_i + c·e_c``."""

    def __init__(self, n_tasks: int, dim: int):
        super().__init__()
        self.tasks = nn.Parameter(torch.randn(n_tasks, dim) / math.sqrt(dim))
        self.budget = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, pref: torch.Tensor, budget: torch.Tensor | float) -> torch.Tensor:
        return pref.to(self.tasks.dtype) @ self.tasks + budget * self.budget


class EdgeHyperNet(nn.Module):
    """h(r, c; φ) → α ``[L-1, N, N]``: row-softmaxed parent probabilities of every branching."""

    def __init__(self, n_tasks: int, n_layers: int, embed: int = 32, hidden: int = 100, depth: int = 2,
                 own_bias: float = 0.0):
        super().__init__()
        self.n_tasks, self.n_branch = n_tasks, n_layers - 1
        self.embed = ControlEmbedding(n_tasks, embed)
        self.body = mlp(embed, hidden, depth)
        self.out = nn.Linear(hidden, self.n_branch * n_tasks * n_tasks)  # the L-1 heads, one matrix
        if own_bias:  # start near the anchor: every child prefers its own stream's parent
            with torch.no_grad():
                self.out.bias.view(self.n_branch, n_tasks, n_tasks).add_(own_bias * torch.eye(n_tasks))

    def logits(self, pref: torch.Tensor, budget: torch.Tensor | float) -> torch.Tensor:
        z = self.out(self.body(self.embed(pref, budget)))
        return z.view(self.n_branch, self.n_tasks, self.n_tasks)

    def forward(self, pref: torch.Tensor, budget: torch.Tensor | float) -> torch.Tensor:
        return torch.softmax(self.logits(pref, budget), dim=-1)


class WeightHyperNet(nn.Module):
    """h̄(r, c; φ̄) → ``{(l, j): (Δγ, Δβ)}`` for the normalisation of every listed node."""

    def __init__(self, n_tasks: int, nodes: dict[tuple[int, int], int], embed: int = 32, hidden: int = 100,
                 depth: int = 3):
        super().__init__()
        self.keys = sorted(nodes)
        self.sizes = [nodes[k] for k in self.keys]
        self.embed = ControlEmbedding(n_tasks, embed)
        self.body = mlp(embed, hidden, depth)
        self.out = nn.Linear(hidden, 2 * sum(self.sizes))  # one matrix: every output gets a gradient
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pref: torch.Tensor, budget: torch.Tensor | float) -> dict[tuple[int, int], tuple]:
        flat = self.out(self.body(self.embed(pref, budget)))
        gammas, betas = flat.split(sum(self.sizes))
        return {k: (g, b) for k, g, b in zip(self.keys, gammas.split(self.sizes), betas.split(self.sizes))}


def gumbel_softmax(alpha: torch.Tensor, noise: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """ν = softmax((log α + G)/ζ) with ``G = −log(−log U)`` given; ``hard``: one-hot forward,
    soft gradient (straight-through)."""
    soft = torch.softmax((torch.log(alpha.clamp_min(1e-12)) + noise) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return one_hot + soft - soft.detach()


def temperature(step: int, steps: int, start: float, decay: float, decays: int) -> float:
    """ζ = start · decay^⌊step / every⌋ with ``every = steps / decays``: the paper's schedule (5, ×0.97
    every 300 of 30K steps, i.e. 100 decays) compressed or stretched to the phase's length."""
    every = max(steps / max(decays, 1), 1.0)
    return start * decay ** math.floor(step / every)


def draw_control(seed: int, step: int, n_tasks: int, eta: float,
                 group: int = 0) -> tuple[np.ndarray, float, np.random.Generator]:
    """r ∼ Dirichlet(η·1), c ∼ U(0, 1), from a generator seeded by (seed, step, group): every rank and a
    resumed run draw the same, so DDP with a split batch equals one process with the whole batch."""
    rng = np.random.default_rng([seed, step, group])
    g = rng.gamma(eta, size=n_tasks)
    if g.sum() <= 0:  # all draws underflowed (tiny η): a vertex of the simplex
        g = np.eye(n_tasks)[rng.integers(n_tasks)]
    return g / g.sum(), float(rng.uniform()), rng


def gumbel_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    u = rng.uniform(np.finfo(np.float64).tiny, 1.0, size=shape)
    return torch.as_tensor(-np.log(-np.log(u)), dtype=torch.float32)
