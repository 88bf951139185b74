"""BatchNorm without gradient paths between tasks, and one shared set of running statistics.

Train-mode BatchNorm couples the samples of a batch: through the batch mean and variance,
task t's loss reaches the samples of task s, and from there the channel groups that s may
train but t may not. Two ways remove that path exactly (``statistics``):

* ``chunk`` — each task's sub-batch is normalised with its own statistics, like ghost
  BatchNorm with task-sized chunks. Training then normalises away the differences between
  tasks that the shared running statistics keep at evaluation.
* ``cut`` — the forward uses the whole batch's statistics (the values of plain BatchNorm), but
  the statistics seen by task s's rows carry gradient only from task s's own rows; the other
  tasks' shares are constants. Training and evaluation normalise alike.

Per-task statistics are reduced and handed back to the rows with a 0/1 task-membership
matrix (matrix products, deterministic on every device), so the rows need not be sorted
and no size leaves the device. A row of another task enters a task's statistics only as
``0 * value``, which is exactly zero, so the routed gradients stay exact. The affine
parameters and running statistics are shared, so evaluation is one ordinary BatchNorm and
inference one forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class RoutingState:
    """What the current training forward routes: the per-sample group (task) ids.

    Set by the GradSplit wrapper around one forward and cleared after it; ``None`` means an
    ordinary forward (evaluation, or a call without task ids)."""

    def __init__(self):
        self.task_ids: torch.Tensor | None = None
        self.groups = 0
        self._onehot: dict[torch.dtype, torch.Tensor] = {}

    def set(self, task_ids: torch.Tensor, groups: int) -> None:
        """``groups``: number of ids (tasks, plus one for rows that belong to no task)."""
        self.task_ids, self.groups, self._onehot = task_ids, groups, {}

    def clear(self) -> None:
        self.task_ids, self._onehot = None, {}

    @property
    def active(self) -> bool:
        return self.task_ids is not None

    def onehot(self, dtype: torch.dtype) -> torch.Tensor:
        """``[groups, rows]`` membership matrix (cached for the forward)."""
        m = self._onehot.get(dtype)
        if m is None:
            ids = self.task_ids
            m = torch.zeros(self.groups, ids.numel(), dtype=dtype, device=ids.device)
            m[ids, torch.arange(ids.numel(), device=ids.device)] = 1
            self._onehot[dtype] = m
        return m


def _per_row(onehot: torch.Tensor, per_group: torch.Tensor) -> torch.Tensor:
    """``[groups, C]`` statistics → ``[rows, C, 1, 1]``, each row reading its own group's."""
    return (onehot.t() @ per_group)[:, :, None, None]


class TaskwiseBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training forward keeps tasks apart (``statistics``: chunk | cut).

    ``running_stats`` (chunk only): ``task_mean`` tracks the sample-weighted mean of the per-task
    means and unbiased variances (what training normalised with); ``batch`` tracks the whole
    batch's. ``cut`` always tracks the whole batch's, which is what it normalises with."""

    def __init__(
        self,
        num_features: int,
        state: RoutingState,
        running_stats: str = "task_mean",
        statistics: str = "chunk",
        **kwargs: Any,
    ):
        super().__init__(num_features, **kwargs)
        if running_stats not in ("task_mean", "batch"):
            raise ValueError(f"algorithm.bn_running_stats: '{running_stats}' is not one of task_mean, batch")
        if statistics not in ("chunk", "cut"):
            raise ValueError(f"algorithm.task_bn: '{statistics}' is not one of chunk, cut, none")
        self.state = state
        self.running_stats = running_stats if statistics == "chunk" else "batch"
        self.statistics = statistics

    @classmethod
    def from_batchnorm(
        cls, bn: nn.BatchNorm2d, state: RoutingState, running_stats: str, statistics: str = "chunk"
    ) -> TaskwiseBatchNorm2d:
        new = cls(
            bn.num_features,
            state,
            running_stats,
            statistics,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
        )
        new.load_state_dict(bn.state_dict())
        return new.to(bn.weight.device if bn.affine else "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.state.active):
            return super().forward(x)
        ids = self.state.task_ids
        if x.shape[0] != ids.numel():
            raise RuntimeError(f"task-wise BatchNorm got {x.shape[0]} rows for {ids.numel()} task ids")
        dtype = torch.promote_types(x.dtype, torch.float32)  # bf16 activations: fp32 statistics
        xs, onehot = x.to(dtype), self.state.onehot(dtype)
        per = x.shape[2] * x.shape[3]
        rows = onehot.sum(1)  # rows per group
        elems = (rows * per).clamp_min(1.0)[:, None]  # an absent group divides 0 by 1
        mean = (onehot @ xs.sum(dim=(2, 3))) / elems
        if self.statistics == "chunk":
            centred = xs - _per_row(onehot, mean)
            var = (onehot @ centred.square().sum(dim=(2, 3))) / elems
            scale = torch.rsqrt(_per_row(onehot, var) + self.eps)
            out = centred * scale
            second = var + mean.square()
        else:
            second = (onehot @ xs.square().sum(dim=(2, 3))) / elems
            share = (rows / rows.sum())[:, None]
            own_mean, own_second = share * mean, share * second

            def whole_value_own_gradient(own: torch.Tensor) -> torch.Tensor:
                return own.detach().sum(0)[None, :, None, None] + _per_row(onehot, own - own.detach())

            m, s = whole_value_own_gradient(own_mean), whole_value_own_gradient(own_second)
            out = (xs - m) * torch.rsqrt((s - m.square()).clamp_min(0.0) + self.eps)
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._track(rows, per, mean.detach(), second.detach())
        return out.to(x.dtype)

    @torch.no_grad()
    def _track(self, rows: torch.Tensor, per: int, mean: torch.Tensor, second: torch.Tensor) -> None:
        """Running statistics from the per-group mean and mean square (biased) of this batch."""
        total = rows.sum() * per  # a tensor: no device-to-host copy
        share = (rows / rows.sum())[:, None]
        whole_mean = (share * mean).sum(0)
        if self.running_stats == "batch":
            var = (
                ((share * second).sum(0) - whole_mean.square()).clamp_min(0.0)
                * total
                / (total - 1).clamp_min(1.0)
            )
        else:
            n = rows[:, None] * per
            unbiased = (second - mean.square()).clamp_min(0.0) * n / (n - 1).clamp_min(1.0)
            var = (share * unbiased).sum(0)
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(whole_mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(var.to(self.running_var.dtype), factor)


def convert_batchnorm(
    root: nn.Module, names: list[str], state: RoutingState, running_stats: str, statistics: str = "chunk"
) -> list[str]:
    """Replace the ``BatchNorm2d`` modules ``names`` (dotted, under ``root``) in place."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        bn = TaskwiseBatchNorm2d.from_batchnorm(getattr(parent, child), state, running_stats, statistics)
        setattr(parent, child, bn)
    return names
