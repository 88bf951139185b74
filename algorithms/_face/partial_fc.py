"""A margin head whose class weights are sharded across data-parallel ranks (PartialFC-style).

With millions of identities the classifier W [C, d] does not fit, or costs too much to
all-reduce, on every rank. Each rank keeps rows ``[start, end)`` of W; the embeddings of the
global batch are gathered, each rank scores them against its own classes, and the softmax
normaliser, the row maximum and the target logit are combined with all-reduces. The loss is
the global-batch mean, identical on every rank.

Gradients:
- W's shard gets exactly ∂L/∂W_shard (it is not data-parallel: keep it out of the DDP
  wrapper and out of any gradient all-reduce).
- A rank's own embeddings get Σ_shards ∂L/∂e (all-reduce in the gather's backward), times
  ``grad_scale`` (default: world size) so that DDP's *averaging* of the backbone gradients
  yields ∂L/∂θ of the global mean loss.

All ranks must pass the same number of rows. The collectives are plain ``torch.distributed``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from algorithms._face.heads import KINDS, cosine, margin_logits


def class_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """Rows of W held by ``rank``: contiguous, sizes differing by at most one."""
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0; backward sums every rank's gradient for our rows and scales it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grad_scale: float) -> torch.Tensor:
        ctx.rank, ctx.n, ctx.grad_scale = dist.get_rank(), x.shape[0], grad_scale
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        mine = grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]
        return mine * ctx.grad_scale, None


class _ReduceReplicated(torch.autograd.Function):
    """All-reduce whose result every rank then uses identically: the backward is the identity
    (each rank's local input receives the cotangent of the replicated output once)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


def _gather_plain(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class ShardedMarginHead(nn.Module):
    """Rows ``class_range(C, rank, world)`` of a CosFace/ArcFace head; ``loss`` is collective."""

    def __init__(self, dim: int, num_classes: int, rank: int, world: int, scale: float = 64.0,
                 margin: float = 0.35, kind: str = "cosface", grad_scale: float | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"margin head: unknown kind '{kind}' ({' | '.join(KINDS)})")
        self.start, self.end = class_range(num_classes, rank, world)
        self.weight = nn.Parameter(torch.randn(self.end - self.start, dim) / dim ** 0.5)
        self.scale, self.margin, self.kind = scale, margin, kind
        self.grad_scale = float(world if grad_scale is None else grad_scale)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor,
             margin: float | torch.Tensor | None = None) -> torch.Tensor:
        """Mean margin cross-entropy over the global batch (rows labelled -1 ignored)."""
        m = self.margin if margin is None else margin
        m = torch.as_tensor(m, dtype=torch.float32).expand(len(labels)).contiguous()
        emb = _GatherRows.apply(embeddings.float(), self.grad_scale)
        labels, m = _gather_plain(labels), _gather_plain(m)
        logits = margin_logits(cosine(emb, self.weight), labels, m, self.scale, self.kind, self.start)
        # numerically safe distributed log-sum-exp: the max carries no gradient
        row_max = logits.detach().max(dim=1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        sum_exp = _ReduceReplicated.apply((logits - row_max[:, None]).exp().sum(dim=1))
        local = labels - self.start
        mine = (labels >= 0) & (local >= 0) & (local < logits.shape[1])
        picked = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
        target = _ReduceReplicated.apply(torch.where(mine, picked, torch.zeros_like(picked)))
        per_row = row_max + sum_exp.log() - target
        valid = labels >= 0
        return per_row[valid].sum() / valid.sum().clamp_min(1)
