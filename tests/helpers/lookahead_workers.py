"""A tiny look-ahead problem and its data-parallel worker (module level so that spawn can pickle it).

The inner loss weighs each training sample by softplus(φ[level]) — φ is a meta-parameter outside
the model, as a learned per-sample margin or weight is — and the outer loss is the MSE of a
held-out batch at the fast weights. Everything is float64 so that 2 ranks and 1 rank can be
compared to round-off.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from framework.lookahead import average_grads, forward_at, inner_step, outer_backward, trainable

B, B_META, LEVELS, ALPHA = 8, 6, 3, 0.4


def tiny_mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()


def problem(seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch with a level per sample, a held-out batch and the initial φ."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(B, 3, generator=g, dtype=torch.float64),
            "y": torch.randn(B, 1, generator=g, dtype=torch.float64),
            "level": torch.arange(B) % LEVELS,
            "x_meta": torch.randn(B_META, 3, generator=g, dtype=torch.float64),
            "y_meta": torch.randn(B_META, 1, generator=g, dtype=torch.float64),
            "phi": torch.randn(LEVELS, generator=g, dtype=torch.float64)}


def rows(data: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s contiguous share of both batches (φ is replicated)."""
    out = {}
    for key, value in data.items():
        n = len(value)
        out[key] = value if key == "phi" else value[rank * n // world:(rank + 1) * n // world]
    return out


def _losses(net, phi, data, second_order, reduce, world):
    inner = (F.softplus(phi)[data["level"]] * (net(data["x"]) - data["y"]).squeeze(1) ** 2).mean()
    fast = inner_step(inner, trainable(net), ALPHA, second_order=second_order, reduce=reduce,
                      world_size=world)
    return fast, F.mse_loss(forward_at(net, fast, data["x_meta"]), data["y_meta"])


def look_ahead(data: dict[str, torch.Tensor], second_order: bool, reduce=None,
               world: int = 1) -> dict[str, np.ndarray]:
    """Fast weights, the model's outer gradient (averaged over ranks) and, at second order, the
    meta-parameter's outer gradient — each from a fresh graph."""
    net = tiny_mlp()
    fast, outer = _losses(net, data["phi"], data, second_order, reduce, world)
    outer.backward()
    average_grads(net.parameters(), reduce, world)
    out = {f"fast/{k}": v.detach().numpy().copy() for k, v in fast.items()}
    out.update({f"grad/{k}": p.grad.numpy().copy() for k, p in net.named_parameters()})
    if second_order:
        phi = data["phi"].clone().requires_grad_(True)
        _, outer = _losses(tiny_mlp(), phi, data, second_order, reduce, world)
        outer_backward(outer, {"phi": phi}, reduce, world)
        out["grad/phi"] = phi.grad.numpy().copy()
    return out


def ddp_worker(rank: int, world: int, orders: list[bool]) -> list[dict[str, np.ndarray]]:
    """``look_ahead`` on this rank's half of the batches, for every order."""
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    return [look_ahead(rows(problem(), rank, world), order, reduce, world) for order in orders]
