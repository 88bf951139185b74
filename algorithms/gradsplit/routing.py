"""The routing primitives: channel groups, the relation matrix, per-sample gradient masks.

GradSplit changes nothing in the forward pass. In the backward pass, the gradient that
reaches a split module's output, ``delta[b, c]``, is multiplied by ``R[group(c), task(b)]``:
sample ``b`` carries the gradient of its own task's loss only, so one backward over a batch
whose samples belong to different tasks routes every task's gradient separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class GradMask(torch.autograd.Function):
    """Identity in forward; ``grad * mask`` in backward (mask broadcasts over the gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None


def channel_groups(channels: int, tasks: int, min_channels: int = 8, where: str = "") -> torch.Tensor:
    """Group index of every channel: equal groups, the remainder going to the first groups."""
    if channels // tasks < min_channels:
        raise ValueError(
            f"split module {where or '?'}: {channels} channels give groups of {channels // tasks} for "
            f"{tasks} tasks; each group needs >= {min_channels} channels (widen the model or split elsewhere)"
        )
    sizes = [channels // tasks + (1 if g < channels % tasks else 0) for g in range(tasks)]
    return torch.repeat_interleave(torch.arange(tasks), torch.tensor(sizes))


def mask_table(relation: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Row ``t`` is task ``t``'s channel mask ``R[group(c), t]``; the extra last row (no task) is 0."""
    tasks = relation.shape[1]
    table = torch.zeros(tasks + 1, groups.numel(), dtype=relation.dtype, device=relation.device)
    table[:tasks] = relation[groups.to(relation.device)].t()
    return table


def check_relation(matrix: Any, tasks: Sequence[str], key: str = "algorithm.relation") -> torch.Tensor:
    """A T×T matrix of 0/1 with a unit diagonal (rows = groups, columns = tasks), as float."""
    r = torch.as_tensor(matrix, dtype=torch.float32)
    n = len(tasks)
    if r.shape != (n, n):
        raise ValueError(
            f"{key}: expected a {n}x{n} matrix for tasks {list(tasks)}, got shape {tuple(r.shape)}"
        )
    if not bool(((r == 0) | (r == 1)).all()):
        raise ValueError(f"{key}: entries must be 0 or 1, got {r.tolist()}")
    if not bool((r.diagonal() == 1).all()):
        raise ValueError(
            f"{key}: the diagonal must be 1 (a task always trains its own group), got {r.tolist()}"
        )
    return r


def labelled_task(labels: dict[str, torch.Tensor], tasks: Sequence[str]) -> torch.Tensor:
    """Per-sample task index for one-task-per-sample data; ``len(tasks)`` where nothing is labelled."""
    have = torch.stack([labels[t] >= 0 for t in tasks], dim=1)
    count = have.sum(1)
    if bool((count > 1).any()):
        raise ValueError(
            f"algorithm.mode=per_sample expects one labelled task per sample (multi-source data), but "
            f"{int((count > 1).sum())} samples carry several; use algorithm.mode=exact or random_task"
        )
    ids = have.float().argmax(1)
    return torch.where(count == 1, ids, torch.full_like(ids, len(tasks)))


def random_task(
    labels: dict[str, torch.Tensor], tasks: Sequence[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """One task per sample among its labelled ones (stochastic task allocation).

    Fully labelled batches get a balanced draw (a random permutation dealt round-robin), so every
    task's sub-batch has the same size up to one sample."""
    have = torch.stack([labels[t] >= 0 for t in tasks], dim=1)
    n, t = have.shape
    device = have.device
    if bool(have.all()):
        perm = torch.randperm(n, generator=generator).to(device)
        ids = torch.empty(n, dtype=torch.long, device=device)
        ids[perm] = torch.arange(n, device=device) % t
        return ids
    scores = torch.rand(n, t, generator=generator).to(device).masked_fill(~have, -1.0)
    ids = scores.argmax(1)
    return torch.where(have.any(1), ids, torch.full_like(ids, t))


def keep_only_task(labels: dict[str, torch.Tensor], tasks: Sequence[str], ids: torch.Tensor) -> dict:
    """Labels with every task but the sample's assigned one set to -1."""
    return {
        name: torch.where(ids == k, labels[name], torch.full_like(labels[name], -1))
        for k, name in enumerate(tasks)
    }
