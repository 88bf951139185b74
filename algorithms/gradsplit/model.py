"""The split network: a multi-task net whose tapped backbone modules route gradients by task.

``GradSplitNet`` wraps a ``MultiTaskNet`` without changing its forward computation. Each
split module (a backbone stage, block or layer, named like ``stage3`` or ``stage3.1``) gets a
forward hook that inserts ``GradMask`` on its output; BatchNorm layers after the first split
module become task-wise, and GroupNorm layers that feed a split output are regrouped so that no
normalisation group straddles two split groups. ``forward(x)`` in eval mode, or without task
ids, is exactly the (regrouped) wrapped network's forward.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from algorithms.gradsplit.routing import GradMask, channel_groups, mask_table
from algorithms.gradsplit.taskbn import RoutingState, convert_batchnorm
from framework.models.resnet import BasicBlock

log = logging.getLogger("medley")


def default_split_modules(backbone: nn.Module) -> list[str]:
    """Every block of the last stage (the spec's default: the deeper conv modules)."""
    last = backbone.stage_names[-1]
    return [f"{last}.{i}" for i in range(len(getattr(backbone, last)))]


def output_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters whose first dimension indexes the module's output channels."""
    if isinstance(module, nn.Sequential):
        prefix = str(len(module) - 1)
        return {f"{prefix}.{k}": p for k, p in output_parameters(module[-1]).items()}
    if isinstance(module, BasicBlock):
        out = {f"conv2.{k}": p for k, p in module.conv2.named_parameters()}
        out.update({f"bn2.{k}": p for k, p in module.bn2.named_parameters()})
        out.update({f"short.{k}": p for k, p in module.short.named_parameters()})
        return out
    if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm)):
        return dict(module.named_parameters())
    raise TypeError(f"cannot split a {type(module).__name__}: tap a stage, a block, a conv or a norm layer")


def output_group_norms(module: nn.Module) -> dict[str, nn.GroupNorm]:
    """GroupNorm layers between the module's output filters and its output.

    Their statistics mix the channels of a normalisation group, so the gradient a task may send
    to one channel also reaches the filters of the other channels in that group. A tapped
    GroupNorm itself is not listed: the mask sits on its own output, and its per-channel
    affine parameters see only their own channel's gradient."""
    if isinstance(module, nn.Sequential):
        prefix = str(len(module) - 1)
        return {f"{prefix}.{k}": m for k, m in output_group_norms(module[-1]).items()}
    if isinstance(module, BasicBlock):
        found = {"bn2": module.bn2, **{f"short.{k}": m for k, m in module.short.named_children()}}
        return {k: m for k, m in found.items() if isinstance(m, nn.GroupNorm)}
    return {}


def aligned_group_count(num_groups: int, groups: torch.Tensor) -> int | None:
    """The GroupNorm group count nearest ``num_groups`` whose groups each lie within one split
    group (``groups``: split group per channel); ``None`` when only one channel per group fits.

    GroupNorm groups are equal and contiguous, so a group size fits iff it divides every split
    group's size; ties go to the finer grouping."""
    channels = groups.numel()
    common = math.gcd(*torch.bincount(groups).tolist())
    counts = [channels // size for size in range(1, common + 1) if common % size == 0]
    if num_groups in counts:
        return num_groups
    if common == 1:
        return None
    return min(counts, key=lambda g: (abs(g - num_groups), -g))


def output_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Sequential):
        return output_channels(module[-1])
    if isinstance(module, BasicBlock):
        return module.conv2.out_channels
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"cannot tell the output channels of a {type(module).__name__}")


class GradSplitNet(nn.Module):
    """``net`` (``{task: logits}`` from ``net(x)``) with GradSplit routing on ``split_modules``.

    ``relation`` is a buffer (checkpointed, broadcast by DDP); ``set_relation`` changes it in
    place, e.g. after a look-ahead warm-up."""

    def __init__(
        self,
        net: nn.Module,
        tasks: list[str],
        relation: torch.Tensor,
        split_modules: list[str] | None = None,
        task_bn: str = "chunk",
        bn_running_stats: str = "task_mean",
        min_group_channels: int = 8,
    ):
        super().__init__()
        self.net, self.tasks = net, list(tasks)
        self.state = RoutingState()
        self.register_buffer("relation", relation.detach().clone().float())
        backbone = net.backbone
        self.split_modules = list(split_modules) if split_modules else default_split_modules(backbone)
        order = [name for name, _ in backbone.named_modules()]
        for name in self.split_modules:
            if name not in order:
                raise ValueError(
                    f"algorithm.split_modules: no backbone module '{name}' "
                    f"(stages: {backbone.stage_names}; blocks like {backbone.stage_names[-1]}.0)"
                )
        self.split_modules.sort(key=order.index)
        self.groups: dict[str, torch.Tensor] = {}
        self._tables: dict[tuple, torch.Tensor] = {}
        for name in self.split_modules:
            module = backbone.get_submodule(name)
            self.groups[name] = channel_groups(
                output_channels(module), len(self.tasks), min_group_channels, name
            )
            module.register_forward_hook(self._mask_hook(name))
        self.aligned_norms = self._align_group_norms(backbone)
        # not kept as an attribute: a second path to the same submodule would make
        # torch.func.functional_call (the look-ahead) treat its weights as tied and leave the
        # looked-ahead values in the model
        backbone.get_submodule(self.split_modules[0]).register_forward_pre_hook(self._replicate_hook)
        self._replicas = 0
        if task_bn not in ("chunk", "cut", "none"):
            raise ValueError(f"algorithm.task_bn: '{task_bn}' is not one of chunk, cut, none")
        self.taskwise_bn = self._taskwise_bn(backbone, bn_running_stats, task_bn) if task_bn != "none" else []

    # --- construction -----------------------------------------------------------------------
    def _align_group_norms(self, backbone: nn.Module) -> dict[str, str]:
        """Regroup, in place, every GroupNorm that feeds a split output so that each of its groups
        lies within one split group (the parameters are per channel: weights load unchanged).
        Returns ``{norm name: split module}``; refuses a channel count no grouping fits."""
        aligned = {}
        for split in self.split_modules:
            groups = self.groups[split]
            for sub, norm in output_group_norms(backbone.get_submodule(split)).items():
                name = f"{split}.{sub}"
                count = aligned_group_count(norm.num_groups, groups)
                if count is None:
                    sizes = torch.bincount(groups).tolist()
                    raise ValueError(
                        f"model.norm=group: split module {split} has {groups.numel()} channels in split "
                        f"groups of {sizes} for {len(self.tasks)} tasks (the dataset's or algorithm.tasks); "
                        f"no GroupNorm grouping of {name} keeps its groups inside split groups except one "
                        f"channel per group. Make the stage width a multiple of the number of tasks "
                        f"(model.widths), split elsewhere (algorithm.split_modules) or use model.norm=batch"
                    )
                if count != norm.num_groups:
                    log.info(
                        "gradsplit: %s GroupNorm %d -> %d groups, each inside one split group",
                        name, norm.num_groups, count,
                    )
                    norm.num_groups = count
                aligned[name] = split
        return aligned

    def _taskwise_bn(self, backbone: nn.Module, running_stats: str, statistics: str) -> list[str]:
        """Every BatchNorm2d after the first split module's subtree, in registration order."""
        names = [n for n, _ in backbone.named_modules()]
        first = self.split_modules[0]
        after = [n for n in names[names.index(first) + 1 :] if not n.startswith(first + ".")]
        bns = [n for n in after if type(backbone.get_submodule(n)) is nn.BatchNorm2d]
        return convert_batchnorm(backbone, bns, self.state, running_stats, statistics)

    def group_parameters(self) -> dict[str, list[tuple[str, nn.Parameter, torch.Tensor]]]:
        """Per split module: (name, parameter, channel group index per row) of its output filters."""
        out = {}
        for name in self.split_modules:
            module = self.net.backbone.get_submodule(name)
            out[name] = [(f"{name}.{k}", p, self.groups[name]) for k, p in output_parameters(module).items()]
        return out

    def set_relation(self, relation: torch.Tensor) -> None:
        self.relation.copy_(relation.to(self.relation))
        self._tables.clear()

    # --- hooks --------------------------------------------------------------------------------
    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """Mask table of one split module, rebuilt when the relation changes in place
        (``set_relation``, ``load_state_dict``, a DDP buffer broadcast) or moves."""
        key = (name, device, self.relation._version)
        table = self._tables.get(key)
        if table is None:
            self._tables = {k: v for k, v in self._tables.items() if k[0] != name}
            table = self._tables[key] = mask_table(self.relation.to(device), self.groups[name])
        return table

    def _mask_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not (self.training and self.state.active):
                return None
            mask = self._table(name, output.device).index_select(0, self.state.task_ids)
            return GradMask.apply(output, mask.view(*mask.shape, *([1] * (output.dim() - 2))))

        return hook

    def _replicate_hook(self, module: nn.Module, inputs: tuple) -> tuple | None:
        if not (self.training and self.state.active and self._replicas):
            return None
        return (inputs[0].repeat(self._replicas, *([1] * (inputs[0].dim() - 1))),) + tuple(inputs[1:])

    # --- forward ------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, task_ids: torch.Tensor | None = None, replicate: bool = False
    ) -> dict[str, torch.Tensor]:
        """``task_ids`` (per sample, ``len(tasks)`` = no task): one-task-per-sample routing.
        ``replicate``: exact routing of fully labelled samples — the split section runs once per
        task on a copy of the batch, and head ``t`` reads copy ``t``."""
        if not self.training or (task_ids is None and not replicate):
            return self.net(x)
        if replicate:
            return self._forward_replicated(x)
        return self._forward_routed(x, task_ids)

    def _forward_routed(self, x: torch.Tensor, task_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        self.state.set(task_ids, len(self.tasks) + 1)
        try:
            return self.net(x)
        finally:
            self.state.clear()

    def _forward_replicated(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n_tasks, batch = len(self.tasks), x.shape[0]
        task_ids = torch.arange(n_tasks, device=x.device).repeat_interleave(batch)
        self.state.set(task_ids, n_tasks + 1)
        self._replicas = n_tasks
        try:
            out = self.net(x)
        finally:
            self.state.clear()
            self._replicas = 0
        return {t: out[t][k * batch : (k + 1) * batch] for k, t in enumerate(self.tasks)}
