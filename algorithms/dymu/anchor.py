"""The anchor network (N single-task streams of L nodes), trees over it, pruning and cost.

Node ``(l, j)`` is block ``l`` of task ``j``'s stream. A tree gives every node of layers
``1..L-1`` one parent in the layer below (``parents[l-1, j]``) and every task head one node of
the top layer (``heads_from[j]``; the identity in DYMU's search space, stream 0 for hard
sharing). Nodes no used child picks are pruned; a tree's compute is the sum over its used nodes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from framework.models import norm_layer


@dataclass(frozen=True)
class TaskSpec:
    """One output: ``dense`` (per-pixel logits at the input's size) or an image-level label."""

    name: str
    classes: int
    dense: bool


class Node(nn.Module):
    """conv3×3 → norm → ReLU. The norm's affine can be shifted by ``(dgamma, dbeta)`` (the weight
    hypernetwork) and its statistics frozen (hypernetwork stages: running statistics only)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm = norm_layer(norm, cout)
        self.kind = norm
        self.frozen_stats = False

    @property
    def channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor, dgamma: torch.Tensor | None = None,
                dbeta: torch.Tensor | None = None) -> torch.Tensor:
        h, n = self.conv(x), self.norm
        if self.kind == "none":
            return F.relu(h)
        weight = n.weight if dgamma is None else n.weight + dgamma
        bias = n.bias if dbeta is None else n.bias + dbeta
        if self.kind == "group":
            return F.relu(F.group_norm(h, n.num_groups, weight, bias, n.eps))
        batch_stats = n.training and not self.frozen_stats
        return F.relu(F.batch_norm(h, n.running_mean, n.running_var, weight, bias, batch_stats,
                                   n.momentum if batch_stats else 0.0, n.eps))


class Head(nn.Module):
    """Dense: 1×1 conv, logits upsampled to ``size`` (the input's size divided by the output stride).
    Label: global pooling + linear."""

    def __init__(self, cin: int, task: TaskSpec):
        super().__init__()
        self.dense = task.dense
        self.proj = nn.Conv2d(cin, task.classes, 1) if task.dense else nn.Linear(cin, task.classes)

    def forward(self, h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if not self.dense:
            return self.proj(h.mean(dim=(2, 3)))
        logits = self.proj(h)
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def node_strides(widths: list[int], stem_stride: int) -> list[int]:
    """The first node takes ``stem_stride``; later nodes halve the resolution when the width grows."""
    return [stem_stride] + [2 if widths[i] > widths[i - 1] else 1 for i in range(1, len(widths))]


class AnchorNet(nn.Module):
    """N streams × L nodes plus one head per task; the hypernetworks are attached at their stages.

    ``forward(x)`` runs the anchor (each task its own stream). ``forward(x, mix=ν)`` runs the
    soft-routed supernet: child ``(l+1, j)`` reads ``Σ_k ν[l, j, k] · y_k^l`` (all nodes computed).
    ``forward(x, tree=(parents, heads_from))`` computes only the tree's used nodes.
    ``deltas``: per-node ``(dgamma, dbeta)`` keyed ``(l, j)``."""

    def __init__(self, in_channels: int, widths: list[int], tasks: list[TaskSpec], norm: str = "batch",
                 stem_stride: int = 2, output_stride: int = 1):
        super().__init__()
        self.output_stride = output_stride
        self.tasks = list(tasks)
        self.widths = list(widths)
        strides = node_strides(self.widths, stem_stride)
        cins = [in_channels] + self.widths[:-1]
        self.streams = nn.ModuleList(
            nn.ModuleList(Node(cins[l], self.widths[l], strides[l], norm) for l in range(len(widths)))
            for _ in tasks)
        self.heads = nn.ModuleDict({t.name: Head(self.widths[-1], t) for t in tasks})

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    def node(self, layer: int, stream: int) -> Node:
        return self.streams[stream][layer]

    def copy_stream(self, source: int = 0) -> None:
        """Every stream becomes a copy of ``source`` (weights and statistics): the shared initialisation."""
        state = self.streams[source].state_dict()
        for j, stream in enumerate(self.streams):
            if j != source:
                stream.load_state_dict(state)

    def freeze_statistics(self, frozen: bool = True) -> None:
        for stream in self.streams:
            for node in stream:
                node.frozen_stats = frozen

    def out_size(self, x: torch.Tensor) -> tuple[int, int]:
        return x.shape[-2] // self.output_stride, x.shape[-1] // self.output_stride

    def forward(self, x: torch.Tensor, mix: torch.Tensor | None = None, tree: tuple | None = None,
                deltas: dict | None = None) -> dict[str, torch.Tensor]:
        size = self.out_size(x)
        deltas = deltas or {}
        if tree is not None:
            parents, heads_from = tree
            used = used_nodes(parents, heads_from)
            ys = {j: self.node(0, j)(x, *deltas.get((0, j), ())) for j in used[0]}
            for l in range(1, self.n_layers):
                ys = {j: self.node(l, j)(ys[int(parents[l - 1][j])], *deltas.get((l, j), ())) for j in used[l]}
            return {t.name: self.heads[t.name](ys[int(heads_from[j])], size) for j, t in enumerate(self.tasks)}
        n = self.n_tasks
        ys = [self.node(0, j)(x, *deltas.get((0, j), ())) for j in range(n)]
        for l in range(1, self.n_layers):
            if mix is None:
                inputs = ys
            else:
                stacked = torch.stack(ys)  # [N(parents), B, C, H, W]
                inputs = list(torch.einsum("jk,kbchw->jbchw", mix[l - 1].to(stacked.dtype), stacked))
            ys = [self.node(l, j)(inputs[j], *deltas.get((l, j), ())) for j in range(n)]
        return {t.name: self.heads[t.name](ys[j], size) for j, t in enumerate(self.tasks)}


# ----------------------------------------------------------------------------------- trees
def anchor_tree(n_tasks: int, n_layers: int) -> tuple[list[list[int]], list[int]]:
    """Fully branched: every node keeps its own stream (the single-task networks)."""
    return [list(range(n_tasks)) for _ in range(n_layers - 1)], list(range(n_tasks))


def shared_tree(n_tasks: int, n_layers: int, stream: int = 0) -> tuple[list[list[int]], list[int]]:
    """Hard parameter sharing: one stream, every head reads its top node."""
    return [[stream] * n_tasks for _ in range(n_layers - 1)], [stream] * n_tasks


def used_nodes(parents, heads_from) -> list[list[int]]:
    """Per layer, the sorted streams whose node some head depends on (the rest is pruned)."""
    parents = [[int(p) for p in row] for row in parents]
    n_layers = len(parents) + 1
    used: list[set[int]] = [set() for _ in range(n_layers)]
    used[-1] = {int(h) for h in heads_from}
    for l in range(n_layers - 1, 0, -1):
        used[l - 1] = {parents[l - 1][j] for j in used[l]}
    return [sorted(u) for u in used]


def describe(parents, heads_from, tasks: list[str]) -> str:
    """One line per layer, bottom up: which task streams each used node serves."""
    parents = [[int(p) for p in row] for row in parents]
    n_layers = len(parents) + 1
    serves: list[dict[int, list[str]]] = [dict() for _ in range(n_layers)]
    for j, task in enumerate(tasks):  # follow each task's path down the tree
        node = int(heads_from[j])
        for l in range(n_layers - 1, -1, -1):
            serves[l].setdefault(node, []).append(task)
            if l:
                node = parents[l - 1][node]
    lines = []
    for l in range(n_layers):
        groups = "  ".join(f"[{'+'.join(ts)}]@{tasks[s]}" for s, ts in sorted(serves[l].items()))
        lines.append(f"layer {l}: {groups}")
    return "\n".join(lines)


class TreeNet(nn.Module):
    """The standalone model of one tree: copies of the used nodes only (with any BatchNorm shifts
    baked into their affine parameters) and the heads. What a user deploys for one ``(r, c)``."""

    def __init__(self, anchor: AnchorNet, parents, heads_from, deltas: dict | None = None):
        super().__init__()
        self.parents = [[int(p) for p in row] for row in parents]
        self.heads_from = [int(h) for h in heads_from]
        self.tasks = [t.name for t in anchor.tasks]
        self.used = used_nodes(self.parents, self.heads_from)
        self.nodes = nn.ModuleDict()
        for l, streams in enumerate(self.used):
            for j in streams:
                node = copy.deepcopy(anchor.node(l, j))
                delta = (deltas or {}).get((l, j))
                if delta is not None and node.kind != "none":
                    with torch.no_grad():
                        node.norm.weight += delta[0].detach()
                        node.norm.bias += delta[1].detach()
                self.nodes[f"{l}_{j}"] = node
        self.heads = copy.deepcopy(anchor.heads)
        self.output_stride = anchor.output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2] // self.output_stride, x.shape[-1] // self.output_stride
        ys = {j: self.nodes[f"0_{j}"](x) for j in self.used[0]}
        for l in range(1, len(self.used)):
            ys = {j: self.nodes[f"{l}_{j}"](ys[self.parents[l - 1][j]]) for j in self.used[l]}
        return {t: self.heads[t](ys[self.heads_from[j]], size) for j, t in enumerate(self.tasks)}


# ------------------------------------------------------------------------------------ cost
@dataclass(frozen=True)
class CostTable:
    """Parameters and FLOPs of every node and head for one input size, so that a tree's cost is a
    sum (cheap enough for 1000 preferences); FLOPs as ``framework.metrics.cost`` counts them."""

    node_params: list[list[int]]  # [layer][stream]
    node_flops: list[list[int]]
    head_params: dict[str, int]
    head_flops: dict[str, int]

    def cost(self, parents, heads_from) -> dict[str, int]:
        used = used_nodes(parents, heads_from)
        nodes = sum(len(u) for u in used)
        params = sum(self.node_params[l][j] for l, u in enumerate(used) for j in u) + sum(self.head_params.values())
        flops = sum(self.node_flops[l][j] for l, u in enumerate(used) for j in u) + sum(self.head_flops.values())
        return {"nodes": nodes, "params": params, "flops": flops}


@torch.no_grad()
def cost_table(anchor: AnchorNet, image_shape: tuple[int, int, int]) -> CostTable:
    """Measure each node and head once on a one-image probe (eval mode)."""
    from framework.metrics.cost import count_parameters, forward_flops

    was_training = anchor.training
    anchor.eval()
    device = next(anchor.parameters()).device
    x = torch.zeros(1, *image_shape, device=device)
    node_params, node_flops, h = [], [], x
    for l in range(anchor.n_layers):
        node_params.append([count_parameters(anchor.node(l, j)) for j in range(anchor.n_tasks)])
        node_flops.append([forward_flops(anchor.node(l, j), h) for j in range(anchor.n_tasks)])
        h = anchor.node(l, 0)(h)
    size = image_shape[-2] // anchor.output_stride, image_shape[-1] // anchor.output_stride
    head_params = {t: count_parameters(m) for t, m in anchor.heads.items()}
    head_flops = {t: forward_flops(_HeadProbe(m, size), h) for t, m in anchor.heads.items()}
    anchor.train(was_training)
    return CostTable(node_params, node_flops, head_params, head_flops)


class _HeadProbe(nn.Module):
    def __init__(self, head: Head, size: tuple[int, int]):
        super().__init__()
        self.head, self.size = head, size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h, self.size)
