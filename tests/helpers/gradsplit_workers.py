"""GradSplit test helpers: a tiny split network, multi-source batches, and a 2-process DDP worker."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from algorithms.equal_weight.method import task_losses
from algorithms.gradsplit.model import GradSplitNet
from framework.models import build_multitask

TASKS = ["a", "b", "c"]
# rows = groups, columns = tasks: c may not train the groups of a and b; a and b may train c's group
ASYM = [[1, 1, 0], [1, 1, 0], [1, 1, 1]]


def model_config(norm: str = "batch", widths=(8, 24), blocks: int = 2) -> SimpleNamespace:
    return SimpleNamespace(
        name="resnet", widths=list(widths), blocks_per_stage=blocks, norm=norm, stem_stride=2, head_hidden=0
    )


def data_info(tasks=TASKS, classes: int = 3) -> SimpleNamespace:
    return SimpleNamespace(tasks={t: classes for t in tasks}, image_shape=(1, 16, 16))


def split_net(
    relation=ASYM, seed: int = 0, norm: str = "batch", task_bn: str = "chunk", dtype=torch.float32, **kwargs
) -> GradSplitNet:
    torch.manual_seed(seed)
    net = build_multitask(model_config(norm), data_info())
    model = GradSplitNet(net, TASKS, torch.tensor(relation, dtype=torch.float32), task_bn=task_bn, **kwargs)
    return model.to(dtype)


def multi_source_batch(
    n_per_task: int = 4, seed: int = 0, dtype=torch.float32, shuffled: bool = True
) -> dict:
    """Each sample labelled for one task only (-1 elsewhere), tasks interleaved unless not shuffled."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_task * len(TASKS)
    task = torch.arange(len(TASKS)).repeat_interleave(n_per_task)
    if shuffled:
        task = task[torch.randperm(n, generator=g)]
    labels = {
        t: torch.where(task == k, torch.randint(0, 3, (n,), generator=g), -1) for k, t in enumerate(TASKS)
    }
    return {
        "image": torch.rand(n, 1, 16, 16, generator=g, dtype=torch.float64).to(dtype),
        "labels": labels,
        "task": task,
    }


def ce_task_loss(outputs: dict, labels: dict, task: str) -> torch.Tensor:
    keep = labels[task] >= 0
    return torch.nn.functional.cross_entropy(outputs[task][keep], labels[task][keep])


def forbidden_grads(model: GradSplitNet, task_index: int) -> list[tuple[str, torch.Tensor]]:
    """(name, gradient rows) of every group parameter whose group task ``task_index`` may not train."""
    out = []
    for entries in model.group_parameters().values():
        for name, p, groups in entries:
            rows = model.relation[groups, task_index] == 0
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            out.append((name, grad[rows]))
    return out


def allowed_grads(model: GradSplitNet, task_index: int) -> list[tuple[str, torch.Tensor]]:
    out = []
    for entries in model.group_parameters().values():
        for name, p, groups in entries:
            rows = model.relation[groups, task_index] == 1
            out.append((name, p.grad[rows]))
    return out


# --- 2-process DDP worker -------------------------------------------------------------------------
def ddp_zero_gradients(rank: int, world_size: int) -> dict:
    """Under DDP (gloo), with BatchNorm in the routed section: task c's loss alone, over two
    accumulated micro-batches (no_sync, then a synced one), leaves c's forbidden groups at
    exactly zero on every rank; and the full routed loss of a batch without task-c samples
    leaves group c (R = identity) at exactly zero."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = split_net(ASYM, seed=0)
    ddp = DDP(model)
    c = TASKS.index("c")
    micro = [multi_source_batch(4, seed=10 * rank + k) for k in range(2)]

    def c_only(out: dict, labels: dict) -> torch.Tensor:  # the other heads get an exact 0 (no unused params)
        return ce_task_loss(out, labels, "c") / 2 + 0.0 * (out["a"].sum() + out["b"].sum())

    with ddp.no_sync():
        out = ddp(micro[0]["image"], task_ids=micro[0]["task"])
        c_only(out, micro[0]["labels"]).backward()
    out = ddp(micro[1]["image"], task_ids=micro[1]["task"])
    c_only(out, micro[1]["labels"]).backward()
    result = {
        "forbidden_zero": all(torch.equal(g, torch.zeros_like(g)) for _, g in forbidden_grads(model, c)),
        "allowed_nonzero": all(bool(g.abs().sum() > 0) for _, g in allowed_grads(model, c)),
    }

    identity = split_net([[1, 0, 0], [0, 1, 0], [0, 0, 1]], seed=1)
    ddp2 = DDP(identity)
    batch = multi_source_batch(4, seed=100 + rank)
    keep = batch["task"] != c
    labels = {t: v[keep] for t, v in batch["labels"].items()}
    out = ddp2(batch["image"][keep], task_ids=batch["task"][keep])
    sum(task_losses(out, labels).values()).backward()  # task c: an exact 0 that still reaches its head
    result["absent_task_group_zero"] = all(
        torch.equal(p.grad[groups == c], torch.zeros_like(p.grad[groups == c]))
        for entries in identity.group_parameters().values()
        for _, p, groups in entries
    )
    flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, flat)
    result["ranks_agree"] = torch.equal(gathered[0], gathered[1])
    return result
