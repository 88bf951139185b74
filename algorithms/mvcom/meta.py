"""One MvCoM meta update (the L2RW-style look-ahead of the reconstruction), independent of the engine.

    m_i(φ) = clip(m_cls(y_i) + Σ_k φ_k[v_ik])                      the batch's margins
    L_tr(w, φ) = mean_i c_yi ℓ_i(w; m_i(φ))
    ŵ(φ) = w − α ∇_w L_tr(w, φ)                                    second order: ŵ depends on φ
    L_meta = mean_j ℓ_j(ŵ; m₀)                                     uniform margin, balanced meta batch
    ∇_φ L_meta                                                     → φ's own optimizer (``mode=table``)

``mode=per_sample_regress`` reads the same look-ahead per sample: g_i = ∂L_meta/∂δ_i for an
offset δ_i = 0 added to each training sample's margin, target offsets −η·g_i (scaled so that
their batch mean magnitude is η·bound, batch-centred), and φ fitted to them by least squares of the additive
model, blended into φ by an exponential moving average.

Both passes at Θ and at ŵ go through ``framework.lookahead.forward_at`` (BatchNorm statistics
are updated only by the caller's real step). Data parallel: ``reduce`` sums over ranks; the
inner gradient, the meta-gradient and the regression's normal equations are reduced, so every
rank holds the same φ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from algorithms._face.heads import margin_loss
from algorithms.mvcom.margins import MarginTable
from framework.lookahead import Reduce, forward_at, inner_step, outer_backward, trainable

OBJECTIVES = ("uniform", "worst_group")
MODES = ("table", "per_sample_regress")


@dataclass
class MetaSettings:
    alpha: float = 0.01  # look-ahead step
    objective: str = "uniform"
    lookahead: list = field(default_factory=list)  # submodules the look-ahead updates ([] = all)
    eta: float = 1.0  # per_sample_regress: size of the target offsets (in units of the bound)
    ema: float = 0.1  # per_sample_regress: blend of the batch fit into φ


def factor_levels(batch: dict, factors: list[str]) -> torch.Tensor:
    """[B, K] levels of the configured factors from ``batch['attrs']`` (-1 = unknown)."""
    attrs = batch.get("attrs", {})
    missing = [f for f in factors if f not in attrs]
    if missing:
        raise KeyError(f"algorithm.factors: {missing} not in the batch's attributes {sorted(attrs)}; "
                       f"for the faces dataset, synthetic factors need data.synthetic=[blur, occlusion]")
    ref = batch["labels"]["identity"]
    if not factors:
        return torch.zeros(len(ref), 0, dtype=torch.long, device=ref.device)
    return torch.stack([attrs[f].long() for f in factors], dim=1)


def meta_objective(losses: torch.Tensor, levels: torch.Tensor, objective: str) -> torch.Tensor:
    """``uniform``: the mean. ``worst_group``: the largest mean over any (factor, level) group present
    (on this rank's share of the meta batch under data parallelism)."""
    if objective == "uniform" or levels.shape[1] == 0:
        return losses.mean()
    if objective != "worst_group":
        raise ValueError(f"algorithm.meta_objective: '{objective}' is not one of {', '.join(OBJECTIVES)}")
    groups = []
    for k in range(levels.shape[1]):
        for level in torch.unique(levels[:, k]):
            if level >= 0:
                groups.append(losses[levels[:, k] == level].mean())
    return torch.stack(groups).max() if groups else losses.mean()


def lookahead_meta_loss(net: torch.nn.Module, table: MarginTable, batch: dict, levels: torch.Tensor,
                        meta_batch: dict, meta_levels: torch.Tensor, settings: MetaSettings,
                        reduce: Reduce | None, world: int, delta: torch.Tensor | None = None,
                        detach_phi: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_meta at the looked-ahead weights, L_tr at w) for this rank's shares of both batches."""
    x, y = batch["image"], batch["labels"]["identity"]
    margin, weight = table(levels, y, delta, detach=detach_phi)
    out = forward_at(net, {}, x, y, margin)  # a pass at w that leaves BatchNorm statistics alone
    inner = (weight * margin_loss(out["logits"], y, reduction="none")).mean()
    params = trainable(net, settings.lookahead or None)
    fast = inner_step(inner, params, settings.alpha, second_order=True, reduce=reduce, world_size=world)
    ym = meta_batch["labels"]["identity"]
    meta_out = forward_at(net, fast, meta_batch["image"], ym, table.base)
    losses = margin_loss(meta_out["logits"], ym, reduction="none")
    return meta_objective(losses, meta_levels, settings.objective), inner.detach()


def table_step(net, table: MarginTable, batch, levels, meta_batch, meta_levels, settings: MetaSettings,
               reduce: Reduce | None = None, world: int = 1) -> dict[str, float]:
    """∇_φ L_meta into ``table.phi.grad`` (averaged over ranks); the caller steps φ's optimizer."""
    loss, inner = lookahead_meta_loss(net, table, batch, levels, meta_batch, meta_levels, settings, reduce, world)
    outer_backward(loss, {"phi": table.phi}, reduce, world)
    return {"meta_loss": float(loss.detach()), "inner_loss": float(inner)}


def _global_sum(t: torch.Tensor, reduce: Reduce | None, world: int) -> torch.Tensor:
    return reduce(t.clone()) if reduce is not None and world > 1 else t


def regress_step(net, table: MarginTable, batch, levels, meta_batch, meta_levels, settings: MetaSettings,
                 reduce: Reduce | None = None, world: int = 1) -> dict[str, float]:
    """Per-sample meta-gradients g_i, target offsets t_i, and φ ← (1−ρ)φ + ρ·(least-squares fit)."""
    delta = torch.zeros(len(levels), device=levels.device, requires_grad=True)
    loss, inner = lookahead_meta_loss(net, table, batch, levels, meta_batch, meta_levels, settings, reduce, world,
                                      delta=delta, detach_phi=True)
    # every rank runs this backward (the inner gradient's collective); the sum over ranks of the
    # rank losses reaches each rank's δ, so dividing by the world size gives ∂(global L_meta)/∂δ_i
    (g,) = torch.autograd.grad(loss, [delta])
    g = g.detach() / world
    scale = table.bound if table.bound > 0 else table.base
    n = _global_sum(torch.tensor([float(len(g)), float(g.abs().sum())], device=g.device, dtype=torch.float64),
                    reduce, world)
    # mean |target| = η·bound; no per-sample clip: a few large opposite gradients would cancel once
    # clipped, and the blended table is bounded by the projection anyway
    target = -settings.eta * scale * g.double() / (n[1] / n[0]).clamp_min(1e-30)
    target = target - _global_sum(target.sum().reshape(1), reduce, world) / n[0]
    # one-hot design of the additive model (unknown levels: no column); normal equations summed over ranks
    k, width = table.phi.shape
    design = torch.zeros(len(g), k * width, dtype=torch.float64, device=g.device)
    for f in range(k):
        known = levels[:, f] >= 0
        design[known, f * width + levels[known, f]] = 1.0
    normal = _global_sum(torch.cat([(design.T @ design).reshape(-1), design.T @ target]), reduce, world)
    xtx, xty = normal[: (k * width) ** 2].view(k * width, k * width), normal[(k * width) ** 2:]
    fit = torch.linalg.solve(xtx + 1e-3 * n[0] * torch.eye(k * width, dtype=torch.float64, device=g.device), xty)
    with torch.no_grad():
        table.phi.mul_(1 - settings.ema).add_(settings.ema * fit.view(k, width).to(table.phi.dtype))
    return {"meta_loss": float(loss.detach()), "inner_loss": float(inner)}
