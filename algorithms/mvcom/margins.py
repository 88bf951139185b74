"""The additive margin model: m_i = clip(m_cls(y_i) + Σ_k φ_k[v_ik], m_min, m_max).

φ (K factors × L_max levels) is a meta-parameter outside the face model; a level the sample's
factor does not know (-1) adds nothing. After every update φ is projected back onto what the
reconstruction requires: the training-frequency-weighted mean of each factor's row is zero
(otherwise the meta-gradient raises every margin together, which acts like a learning-rate
change, not a reweighting) and every entry lies in [−bound, bound] (one-step look-ahead has a
short-horizon bias that otherwise pushes minority margins to the clip).
"""

from __future__ import annotations

import torch
from torch import nn

APPLY = ("margin", "loss_weight", "both")


def center_and_bound(row: torch.Tensor, freq: torch.Tensor, bound: float, center: bool) -> torch.Tensor:
    """One factor's entries (valid levels only) moved so that Σ π φ = 0 and |φ| ≤ bound both hold.

    With both constraints: φ ← clip(φ − c, −bound, bound) with c found by bisection
    (Σ π clip(φ − c) falls monotonically in c, from +bound to −bound, so a root exists)."""
    x, p = row.double(), freq.double() / freq.double().sum().clamp_min(1e-300)
    if center and bound > 0:
        lo, hi = float(x.min()) - bound, float(x.max()) + bound
        for _ in range(100):
            mid = (lo + hi) / 2
            if float((p * (x - mid).clamp(-bound, bound)).sum()) > 0:
                lo = mid
            else:
                hi = mid
        x = (x - (lo + hi) / 2).clamp(-bound, bound)
    elif center:
        x = x - (p * x).sum()
    elif bound > 0:
        x = x.clamp(-bound, bound)
    return x.to(row.dtype)


class MarginTable(nn.Module):
    """φ, the level frequencies π, and the class-level margins and weights.

    Args:
        levels: number of levels of each factor.
        freq: [K, L_max] training counts (or frequencies) per level; rows are normalised.
        class_margin, class_weight: [C] m_cls(y) and c_y.
    """

    def __init__(self, levels: list[int], freq: torch.Tensor, class_margin: torch.Tensor,
                 class_weight: torch.Tensor, base: float, margin_min: float, margin_max: float,
                 bound: float = 0.15, center: bool = True, apply: str = "margin"):
        super().__init__()
        if apply not in APPLY:
            raise ValueError(f"algorithm.apply: '{apply}' is not one of {', '.join(APPLY)}")
        k, width = len(levels), max(levels, default=1)
        self.phi = nn.Parameter(torch.zeros(k, width))
        valid = torch.zeros(k, width, dtype=torch.bool)
        for i, n in enumerate(levels):
            valid[i, :n] = True
        freq = freq.double().clone() * valid
        for i in range(k):  # a factor never seen in training: every level counts the same
            if freq[i].sum() <= 0:
                freq[i] = valid[i].double()
        self.register_buffer("valid", valid)
        self.register_buffer("freq", (freq / freq.sum(1, keepdim=True)).float())
        self.register_buffer("class_margin", class_margin.float().clone())
        self.register_buffer("class_weight", class_weight.float().clone())
        self.base, self.margin_min, self.margin_max = base, margin_min, margin_max
        self.bound, self.center, self.apply = bound, center, apply

    def offsets(self, levels: torch.Tensor, phi: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_k φ_k[v_ik] for [B, K] levels (-1: no term) → [B]."""
        phi = self.phi if phi is None else phi
        known = levels >= 0
        picked = phi[torch.arange(phi.shape[0], device=levels.device)[None, :], levels.clamp_min(0)]
        return (picked * known).sum(1)

    def forward(self, levels: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor | None = None,
                detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (margin, loss weight). ``delta``: extra per-sample offsets (the regression mode);
        ``detach``: φ as a constant (the real step's "upgraded" gradient)."""
        off = self.offsets(levels, self.phi.detach() if detach else None)
        if delta is not None:
            off = off + delta
        y = labels.clamp_min(0)
        base, weight = self.class_margin[y], self.class_weight[y]
        margin = (base + off).clamp(self.margin_min, self.margin_max) if self.apply != "loss_weight" else base
        if self.apply != "margin":  # the same offset read as a relative change of the sample's weight
            weight = weight * (1.0 + off / max(self.base, 1e-6)).clamp_min(0.0)
        return margin, weight

    @torch.no_grad()
    def project_(self) -> None:
        """Centre each factor's row on its training frequencies and bound it; unused levels stay 0."""
        for i in range(self.phi.shape[0]):
            v = self.valid[i]
            row = self.phi[i]
            row[v] = center_and_bound(row[v], self.freq[i][v], self.bound, self.center)
            row[~v] = 0.0

    def weighted_means(self) -> torch.Tensor:
        """Σ_l π_kl φ_k[l] per factor (zero when centred)."""
        return (self.freq * self.phi.detach()).sum(1)


def ldam_margins(counts: torch.Tensor, base: float, power: float) -> torch.Tensor:
    """m_y ∝ n_y^−power, scaled so that the mean over training samples is ``base``."""
    n = counts.double().clamp_min(1)
    raw = n ** -power
    return (raw * base * n.sum() / (raw * n).sum()).float()


def inverse_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """c_y ∝ 1/n_y, scaled so that the mean over training samples is 1."""
    n = counts.double().clamp_min(1)
    return (n.sum() / (len(n) * n)).float()
