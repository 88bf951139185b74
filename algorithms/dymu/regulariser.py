"""The branching regulariser Ω(r, c, α) = c·λ_A·L_active + λ_I·L_inactive and node usage probabilities.

Indexing: ``probs[l-1, j, k]`` is the probability that child ``(l, j)`` picks parent ``(l-1, k)``,
for node layers ``l = 1..L-1``; every task's top node is used (it feeds the task's head).
"""

from __future__ import annotations

import torch


def usage_probability(probs: torch.Tensor) -> torch.Tensor:
    """P_use ``[L, N]`` by the spec's reconstruction, which treats the usage of siblings as
    independent: ``P(l, i) = 1 − Π_k (1 − P(l+1, k) · probs[l, k, i])``, ``P(L-1, ·) = 1``. Exact for
    one branching; below that siblings share ancestors and it is off by up to 0.08 (N=3, L=4)."""
    n_branch, n, _ = probs.shape
    rows = [torch.ones(n, dtype=probs.dtype, device=probs.device)]
    for l in range(n_branch - 1, -1, -1):
        above = rows[0]
        rows.insert(0, 1 - torch.prod(1 - above[:, None] * probs[l], dim=0))
    return torch.stack(rows)


def usage_probability_exact(probs: torch.Tensor) -> torch.Tensor:
    """Exact P_use ``[L, N]``: the distribution over which *set* of nodes a layer uses, propagated
    down child by child (2^N states, so for small N), differentiable in ``probs``."""
    n_branch, n, _ = probs.shape
    states = 1 << n
    bit = torch.tensor([[(s >> i) & 1 for i in range(n)] for s in range(states)], dtype=probs.dtype,
                       device=probs.device)  # [states, N]
    dist = torch.zeros(states, dtype=probs.dtype, device=probs.device)
    dist[states - 1] = 1.0  # every top node is used
    rows = [bit.T @ dist]
    for l in range(n_branch - 1, -1, -1):
        # fold the children in one at a time: joint[used set above, parents picked so far]
        joint = torch.zeros(states, states, dtype=probs.dtype, device=probs.device)
        joint[:, 0] = dist
        for k in range(n):
            uses_k = bit[:, k].bool()[:, None]  # states of the layer above in which child k is used
            moved = torch.zeros_like(joint)
            for i in range(n):
                target = torch.tensor([s | (1 << i) for s in range(states)], device=probs.device)
                moved = moved.index_add(1, target, joint * probs[l, k, i])
            joint = torch.where(uses_k, moved, joint)
        dist = joint.sum(0)
        rows.insert(0, bit.T @ dist)
    return torch.stack(rows)


def active_tasks(pref: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean ``[N]``: ``r_i ≥ threshold / N`` (never empty on the simplex for threshold < 1)."""
    return pref >= threshold / pref.numel()


def active_loss(nu: torch.Tensor, usage: torch.Tensor, affinity: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Σ_l Σ_{i≠j active} ((L−l)/L)·A(i,j)·P_use(l,i)·P_use(l,j)·‖ν_i^l − ν_j^l‖²: likely-used children
    of similar tasks in low layers are pushed to pick the same parent. ``usage``: ``[L, N]``."""
    n_branch = nu.shape[0]
    n_layers = n_branch + 1
    total = nu.new_zeros(())
    pair = (active[:, None] & active[None, :]).to(nu.dtype)
    pair = pair * (1 - torch.eye(len(active), dtype=nu.dtype, device=nu.device))
    for l in range(1, n_layers):
        dist = ((nu[l - 1][:, None, :] - nu[l - 1][None, :, :]) ** 2).sum(-1)  # [N, N]
        weight = (n_layers - l) / n_layers * affinity * usage[l][:, None] * usage[l][None, :] * pair
        total = total + (weight * dist).sum()
    return total


def inactive_loss(nu: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Σ_l Σ_{j inactive} min_{i active} ‖ν_i^l − ν_j^l‖²: inactive tasks copy an active task's branching."""
    if bool(active.all()):
        return nu.new_zeros(())
    total = nu.new_zeros(())
    for l in range(nu.shape[0]):
        dist = ((nu[l][~active][:, None, :] - nu[l][active][None, :, :]) ** 2).sum(-1)  # [inactive, active]
        total = total + dist.min(dim=1).values.sum()
    return total


def omega(nu: torch.Tensor, alpha: torch.Tensor, affinity: torch.Tensor, pref: torch.Tensor, budget: float,
          lambda_active: float, lambda_inactive: float, threshold: float,
          exact: bool = False) -> dict[str, torch.Tensor]:
    """``{"active": c·λ_A·L_active, "inactive": λ_I·L_inactive}`` with P_use from the expected
    probabilities α (the paper's "marginal probability"), not the noisy sample ν."""
    active = active_tasks(pref, threshold)
    usage = (usage_probability_exact if exact else usage_probability)(alpha)
    return {"active": budget * lambda_active * active_loss(nu, usage, affinity.to(nu.dtype), active),
            "inactive": lambda_inactive * inactive_loss(nu, active)}
