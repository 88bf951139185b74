"""One outer step of CDT's Algorithm 1, independent of the engine.

For each (meta-test i, meta-train j ≠ i) pair:

    L_s = E[l_cls(T_j; Θ)] + l_trp(T_j; Θ)                      meta-train loss at Θ
    Θ'  = Θ − α ∇_Θ L_s                                          fast weights (one inner step)
    Σ⁺, Σ⁻ from the pairs of T_j (at Θ, re-using L_s's forward)
    L_t = E[l_cls(T_i; Θ')] + l_trp(T_i; Θ') + l_cdt(T_i, Σ⁺, Σ⁻; Θ')
    G  += (λ ∇_Θ L_s + (1 − λ) ∇_Θ L_t) / n_pairs

∇_Θ L_t goes through Θ' (second order) unless ``second_order`` is off (first-order: Θ' built
from a detached gradient). The engine-facing parts are injected: ``backward(loss)`` accumulates
into ``p.grad`` and ``reduce(t)`` sums a tensor over data-parallel ranks (``None`` in one
process).

Data parallel: every rank holds part of each domain's batch. The inner gradient, Σ's
statistics and (through the caller) G are summed over ranks, so the update equals one
process on the whole batch. Where the graph runs through a reduction (the inner gradient at
second order, Σ when not detached), the reduction is differentiable: its backward sums the
cotangents of every rank, which is exactly the global gradient once G is averaged. The
fast weights, that reduction and the buffer handling are ``framework.lookahead``; this module
assembles CDT's losses around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from algorithms._face.heads import margin_loss
from algorithms.cdt.losses import (
    cdt_loss,
    make_triplets,
    normalize_locations,
    pair_covariance,
    trace_normalize,
    triplet_loss,
)
from framework.lookahead import Reduce, average_grads, forward_at, inner_step, sum_over_ranks, trainable


@dataclass
class MetaSettings:
    alpha: float = 1e-4  # inner step size
    lam: float = 0.7  # weight of the meta-train gradient
    second_order: bool = True
    use_cdt: bool = True
    cdt_weight: float = 1.0
    triplet_weight: float = 1.0
    tau: float = 1.0
    rho: float = 1.0
    normalize: str = "none"  # none | l2_trace
    detach_cov: bool = False


def domain_losses(out: dict[str, torch.Tensor], labels: torch.Tensor, triplets: tuple, settings: MetaSettings):
    """E[l_cls] over every image of the domain batch + weighted l_trp over its triplets."""
    a, p, n = triplets
    loss = margin_loss(out["logits"], labels)
    trp = triplet_loss(out["trip"][a], out["trip"][p], out["trip"][n], settings.rho) if len(a) else loss * 0
    return loss + settings.triplet_weight * trp, {"cls": loss.detach(), "trp": trp.detach()}


def domain_covariances(fmap: torch.Tensor, triplets: tuple, settings: MetaSettings,
                       reduce: Reduce | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ⁺ and Σ⁻ of one domain from its positive and negative pairs."""
    if settings.detach_cov:
        fmap = fmap.detach()
    if settings.normalize == "l2_trace":
        fmap = normalize_locations(fmap)
    a, p, n = triplets
    red = reduce if settings.detach_cov else sum_over_ranks(reduce)
    sig_p, sig_n = pair_covariance(fmap[a], fmap[p], red), pair_covariance(fmap[a], fmap[n], red)
    if settings.normalize == "l2_trace":
        sig_p, sig_n = trace_normalize(sig_p), trace_normalize(sig_n)
    return sig_p, sig_n


def pair_objective(model: torch.nn.Module, batch_i: dict, batch_j: dict, settings: MetaSettings,
                   reduce: Reduce | None = None, world: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """λ L_s + (1 − λ) L_t for meta-test domain i and meta-train domain j, as a function of Θ.

    ``model`` is the unwrapped network (``FaceNet``); batches hold ``image`` and
    ``labels['identity']``. The meta-train forward is the real one (it updates BatchNorm
    statistics); the Θ' forward does not.
    """
    y_j, y_i = batch_j["labels"]["identity"], batch_i["labels"]["identity"]
    trip_j, trip_i = make_triplets(y_j), make_triplets(y_i)

    out_j = model(batch_j["image"], y_j)
    loss_s, logs_s = domain_losses(out_j, y_j, trip_j, settings)
    if settings.alpha == 0:  # Θ' = Θ exactly: no inner gradient to take (the no-look-ahead control)
        fast = {}
    else:
        fast = inner_step(loss_s, trainable(model), settings.alpha, second_order=settings.second_order,
                          reduce=reduce, world_size=world)
    # BatchNorm running statistics are updated by the real (meta-train) pass only
    out_i = forward_at(model, fast, batch_i["image"], y_i)
    loss_t, logs_t = domain_losses(out_i, y_i, trip_i, settings)
    logs = {"meta_train": loss_s.detach(), "cls_s": logs_s["cls"], "trp_s": logs_s["trp"],
            "cls_t": logs_t["cls"], "trp_t": logs_t["trp"]}
    # Under data parallelism every rank must enter Σ's all-reduces (forward and backward) even
    # when its own slice of a domain batch forms no triplet, so the decision is never local there.
    if settings.use_cdt and (world > 1 or (len(trip_i[0]) and len(trip_j[0]))):
        sig_p, sig_n = domain_covariances(out_j["fmap"], trip_j, settings, reduce if world > 1 else None)
        a, p, n = trip_i
        if len(a):
            fmap_i = normalize_locations(out_i["fmap"]) if settings.normalize == "l2_trace" else out_i["fmap"]
            l_cdt, stats = cdt_loss(fmap_i[a], fmap_i[p], fmap_i[n], sig_p, sig_n, settings.tau)
            logs.update({"cdt": l_cdt.detach(), **stats})
        else:  # zero, but connected to Σ so that this rank joins the backward all-reduce too
            l_cdt = 0.0 * (sig_p.sum() + sig_n.sum())
        loss_t = loss_t + settings.cdt_weight * l_cdt
        logs.update({"trace_pos": torch.diagonal(sig_p).sum().detach(),
                     "trace_neg": torch.diagonal(sig_n).sum().detach()})
    logs["meta_test"] = loss_t.detach()
    return settings.lam * loss_s + (1 - settings.lam) * loss_t, logs


def all_pairs(k: int) -> list[tuple[int, int]]:
    """Every (meta-test i, meta-train j ≠ i)."""
    return [(i, j) for i in range(k) for j in range(k) if i != j]


def sample_pairs(k: int, n: int, seed: int, step: int) -> list[tuple[int, int]]:
    """``n`` distinct pairs drawn by an RNG seeded with (seed, step): the same on every rank.
    ``n <= 0`` or ``n >= k(k−1)`` gives all pairs."""
    pairs = all_pairs(k)
    if n <= 0 or n >= len(pairs):
        return pairs
    pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed * 1_000_003 + step))[:n]
    return [pairs[int(q)] for q in sorted(pick)]


def meta_step(model: torch.nn.Module, domains: list[dict], pairs: list[tuple[int, int]], settings: MetaSettings,
              backward: Callable[[torch.Tensor], None], reduce: Reduce | None = None,
              world: int = 1) -> dict[str, float]:
    """Accumulate G/… into ``p.grad`` via ``backward`` for every pair (one graph at a time), then
    average the accumulated gradient over ranks. The caller steps the optimizer."""
    logs: dict[str, float] = {}
    for i, j in pairs:
        loss, pair_logs = pair_objective(model, domains[i], domains[j], settings, reduce, world)
        backward(loss / len(pairs))
        for k, v in pair_logs.items():
            logs[k] = logs.get(k, 0.0) + float(v) / len(pairs)
    average_grads(trainable(model).values(), reduce, world)
    return logs


def pooled_step(model: torch.nn.Module, domains: list[dict], settings: MetaSettings,
                backward: Callable[[torch.Tensor], None], reduce: Reduce | None = None,
                world: int = 1) -> dict[str, float]:
    """The pooled baseline: one plain gradient of the source loss on all domains' images
    together (CosFace; plus the triplet term when ``triplet_weight`` > 0, formed per domain)."""
    images = torch.cat([d["image"] for d in domains])
    labels = torch.cat([d["labels"]["identity"] for d in domains])
    out = model(images, labels)
    loss = margin_loss(out["logits"], labels)
    logs = {"cls": float(loss.detach())}
    if settings.triplet_weight > 0:
        offset, trp = 0, []
        for d in domains:
            a, p, n = make_triplets(d["labels"]["identity"])
            if len(a):
                t = out["trip"]
                trp.append(triplet_loss(t[a + offset], t[p + offset], t[n + offset], settings.rho))
            offset += len(d["image"])
        if trp:
            loss = loss + settings.triplet_weight * torch.stack(trp).mean()
            logs["trp"] = float(torch.stack(trp).mean().detach())
    backward(loss)
    average_grads(trainable(model).values(), reduce, world)
    return logs
