"""The CDT losses as plain functions (Faraki et al., CVPR 2021, Sec. 3).

Feature maps are [B, D, H, W] backbone outputs f_r. A "location" is one D-vector f_r(x)[:, h, w].
Σ is used as it is (d² = rᵀ Σ r, no inverse), so no ridge term is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sum over ranks (differentiable when needed)


def locations(fmap: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] → [B·H·W, D]: every spatial location of every sample as one row."""
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


def normalize_locations(fmap: torch.Tensor) -> torch.Tensor:
    """L2-normalise each local D-vector (the ``l2_trace`` option; not in the paper)."""
    return F.normalize(fmap, dim=1)


def trace_normalize(sigma: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Σ ← D·Σ / tr Σ: unit mean eigenvalue, so d² does not scale with the feature magnitude."""
    return sigma * (sigma.shape[0] / torch.diagonal(sigma).sum().clamp_min(eps))


def pair_covariance(fa: torch.Tensor, fb: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Σ of the pair differences r = f(a) − f(b), pooled over all pairs and all locations,
    mean-centred, divided by N − 1 (eq. b).

    With ``reduce`` (a sum over data-parallel ranks) the pairs of every rank are pooled: two
    all-reduces, the global mean first, then the centred scatter, so the estimate equals the
    single-process one on the concatenated batch.
    """
    r = locations(fa - fb)
    if reduce is None:
        centred = r - r.mean(dim=0, keepdim=True)
        return centred.T @ centred / (r.shape[0] - 1)
    stats = reduce(torch.cat([r.sum(dim=0), r.new_tensor([float(r.shape[0])])]))
    total, n = stats[:-1], stats[-1].detach()
    centred = r - total / n.clamp_min(1)
    return reduce(centred.T @ centred) / (n - 1).clamp_min(1)


def mahalanobis_sq(fa: torch.Tensor, fb: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample d²_Σ between same-position locations, averaged over H·W: [B]."""
    r = (fa - fb).permute(0, 2, 3, 1)
    return torch.einsum("bhwc,cd,bhwd->bhw", r, sigma, r).mean(dim=(1, 2))


def cdt_loss(fa: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, sigma_pos: torch.Tensor,
             sigma_neg: torch.Tensor, tau: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-domain triplet hinge: mean_b [d²_{Σ⁺}(a_b, p_b) − d²_{Σ⁻}(a_b, n_b) + τ]₊.

    The triplets come from one domain, Σ⁺/Σ⁻ from another. Returns the loss and detached
    diagnostics: mean d²₊, mean d²₋ and the fraction of triplets whose hinge is active.
    """
    d_pos = mahalanobis_sq(fa, fp, sigma_pos)
    d_neg = mahalanobis_sq(fa, fn, sigma_neg)
    margin = d_pos - d_neg + tau
    stats = {"d2_pos": d_pos.detach().mean(), "d2_neg": d_neg.detach().mean(),
             "hinge_active": (margin.detach() > 0).float().mean()}
    return F.relu(margin).mean(), stats


def triplet_loss(ea: torch.Tensor, ep: torch.Tensor, en: torch.Tensor, rho: float = 1.0) -> torch.Tensor:
    """Ordinary triplet loss on L2-normalised vectors with squared L2 distances (eq. e)."""
    ea, ep, en = (F.normalize(t, dim=1) for t in (ea, ep, en))
    return F.relu((ea - ep).pow(2).sum(1) - (ea - en).pow(2).sum(1) + rho).mean()


def make_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices (anchor, positive, negative) of class-balanced triplets, no hard mining.

    Identities are taken in order of first appearance. An identity with rows r0, r1, r2, r3, …
    gives one triplet per consecutive pair of its rows: (r0, r1), (r2, r3), … (a P×K batch
    gives ⌊K/2⌋ per identity). The negative of an identity's t-th triplet is the positive row
    of the t-th triplet (or its last) of a partner identity: neighbours are paired (0↔1, 2↔3,
    …; an odd last one takes the one before). That is as random as the sampler's identity
    order, needs no extra RNG, gives distinct negative pairs, and depends only on the rows of
    each identity pair, so a data-parallel split along identity pairs forms the same triplets
    as one process. Rows labelled -1 are ignored.
    """
    rows_of: dict[int, list[int]] = {}
    for row, y in enumerate(labels.tolist()):
        if y >= 0:
            rows_of.setdefault(y, []).append(row)
    pairs = [[(r[2 * t], r[2 * t + 1]) for t in range(len(r) // 2)] for r in rows_of.values() if len(r) >= 2]
    n = len(pairs)
    if n < 2:
        empty = torch.zeros(0, dtype=torch.long, device=labels.device)
        return empty, empty, empty
    out = []
    for b, mine in enumerate(pairs):
        partner = pairs[b ^ 1 if (b ^ 1) < n else b - 1]
        out += [(a, p, partner[min(t, len(partner) - 1)][1]) for t, (a, p) in enumerate(mine)]
    idx = torch.tensor(out, dtype=torch.long, device=labels.device)
    return idx[:, 0], idx[:, 1], idx[:, 2]
