"""Margin-based cosine classification heads (CosFace, ArcFace) with per-sample margins.

The margin is a scalar or a length-B vector ``m_i`` so that methods which learn a margin per
sample (MvCoM) share one implementation with methods that use a constant one (CDT). Logits
and the cross-entropy are computed in fp32 even under autocast: with ``s = 64`` a bf16 softmax
loses the target logit's margin entirely.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-7
KINDS = ("cosface", "arcface", "none")


def _per_sample(margin: float | torch.Tensor, n: int, ref: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(margin, dtype=torch.float32, device=ref.device)
    return m.expand(n) if m.dim() == 0 else m.float()


def cosine(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos θ between L2-normalised embeddings [B, d] and class weights [C, d], fp32, clamped
    to [-1+eps, 1-eps] so that the ArcFace sqrt stays finite."""
    with torch.autocast(embeddings.device.type, enabled=False):
        cos = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(weight.float(), dim=1))
    return cos.clamp(-1 + EPS, 1 - EPS)


def target_with_margin(cos_target: torch.Tensor, margin: torch.Tensor, kind: str) -> torch.Tensor:
    """The margin-penalised target cosine for each row.

    CosFace: cos θ − m.  ArcFace: cos(θ + m) = cos θ cos m − sin θ sin m, replaced by the
    monotone fallback cos θ − m·sin m once θ + m would pass π (cos θ ≤ cos(π − m)), per sample.
    """
    if kind == "cosface":
        return cos_target - margin
    if kind == "arcface":
        sin_target = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(0.0))
        phi = cos_target * torch.cos(margin) - sin_target * torch.sin(margin)
        threshold = torch.cos(math.pi - margin)
        return torch.where(cos_target > threshold, phi, cos_target - margin * torch.sin(margin))
    if kind == "none":
        return cos_target
    raise ValueError(f"margin head: unknown kind '{kind}' ({' | '.join(KINDS)})")


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float | torch.Tensor, scale: float,
                  kind: str = "cosface", class_offset: int = 0) -> torch.Tensor:
    """``scale ·`` cosines with the target column replaced by its margin-penalised value.

    Args:
        cos: [B, C] fp32 cosines (the columns may be a shard of the classes, see ``class_offset``).
        labels: [B] global class indices; -1 (unlabelled) or a class outside this shard keeps
            the row margin-free.
        margin: scalar or [B] per-sample margins.
        class_offset: global index of column 0 (class sharding across ranks).
    """
    local = labels - class_offset
    hit = (labels >= 0) & (local >= 0) & (local < cos.shape[1])
    col = local.clamp(0, cos.shape[1] - 1)
    rows = torch.arange(cos.shape[0], device=cos.device)
    m = _per_sample(margin, cos.shape[0], cos)
    target = target_with_margin(cos[rows, col], m, kind)
    out = cos.clone()
    out[rows[hit], col[hit]] = target[hit]
    return out * scale


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in fp32; rows labelled -1 are ignored."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction=reduction)


class MarginHead(nn.Module):
    """Class weights W [C, d] and a CosFace/ArcFace margin; ``forward`` returns fp32 logits.

    Without ``labels`` it returns the plain scaled cosines (evaluation).
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35,
                 kind: str = "cosface"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"margin head: unknown kind '{kind}' ({' | '.join(KINDS)})")
        # rows of norm ~1: the normalised weights are scale-invariant, so a tiny initial norm would
        # mean a huge effective step size and curvature (the inner meta step feels both)
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / dim ** 0.5)
        self.scale, self.margin, self.kind = scale, margin, kind

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
                margin: float | torch.Tensor | None = None) -> torch.Tensor:
        cos = cosine(embeddings, self.weight)
        if labels is None:
            return cos * self.scale
        return margin_logits(cos, labels, self.margin if margin is None else margin, self.scale, self.kind)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor,
             margin: float | torch.Tensor | None = None) -> torch.Tensor:
        return margin_loss(self(embeddings, labels, margin), labels)
