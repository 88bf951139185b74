"""GradSplit test helpers: a tiny split network, multi-source batches, 2-process DDP and DeepSpeed workers."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from algorithms.gradsplit.model import GradSplitNet
from framework.losses import task_losses
from framework.models import build_multitask

TASKS = ["a", "b", "c"]
# rows = groups, columns = tasks: c may not train the groups of a and b; a and b may train c's group
ASYM = [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
# not symmetric, and every task is kept off some group: a trains groups 0-1, b trains 1-2, c only its own
CHAIN = [[1, 0, 0], [1, 1, 0], [0, 1, 1]]


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


# --- 2-process DeepSpeed workers ---------------------------------------------------------------------
#: fully labelled two-task data routed exactly (no randomness), GroupNorm (no batch statistics), SGD,
#: fp32, ``data.order=global``: one process with batch B and two with B/2 see the same global batches
DS_PARITY = ["algorithm=gradsplit", "algorithm.mode=exact", "algorithm.relation=[[1,1],[0,1]]",
             "model.widths=[8,16]", "model.norm=group", "optim.name=sgd", "trainer.precision=fp32",
             "trainer.grad_clip=0", "trainer.max_steps=6", "data.order=global", "data.limit=256",
             "data.eval_batch_size=128", "logger.progress=off", "logger.tensorboard=false"]
DS_GLOBAL_BATCH = 32


def deepspeed_zero_gradients(rank: int, world_size: int, stage: int) -> dict:
    """Under the DeepSpeed engine at ZeRO ``stage``, for each task alone: its loss over two accumulated
    micro-batches, then one SGD step (lr 1, no momentum, decay or clipping). The weights of the groups
    the task may not train (CHAIN, GroupNorm in the routed section) must come out bit-unchanged, i.e.
    their reduced gradient was exactly zero; the groups it may train must move."""
    from algorithms.gradsplit import GradSplitConfig
    from algorithms.gradsplit.method import GradSplit
    from framework.compose import compose
    from framework.run import build_strategy

    cfg = compose([
        "algorithm=gradsplit", "strategy=deepspeed", f"strategy.zero_stage={stage}", "trainer.precision=fp32",
        "trainer.accumulate_grad_batches=2", "trainer.grad_clip=0", "data.batch_size=12",
    ])
    strategy = build_strategy(cfg)
    model = split_net(CHAIN, seed=0, norm="group")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    engine, _ = strategy.setup(model, {"main": optimizer}, GradSplit(GradSplitConfig(), cfg))
    engine.train()
    forbidden_unchanged, allowed_moved = [], []
    for t, task in enumerate(TASKS):
        before = strategy.full_state_dict(engine)
        for micro in range(2):
            batch = multi_source_batch(4, seed=1000 * stage + 100 * rank + 10 * t + micro)
            out = engine(batch["image"], task_ids=batch["task"])
            others = sum(out[o].sum() for o in TASKS if o != task)  # an exact 0: every head takes part
            strategy.backward((ce_task_loss(out, batch["labels"], task) + 0.0 * others) / 2, engine)
        strategy.optimizer_step(optimizer, engine)
        after = strategy.full_state_dict(engine)
        for entries in model.group_parameters().values():
            for name, _, groups in entries:
                key = f"net.backbone.{name}"
                closed = model.relation[groups, t] == 0
                forbidden_unchanged.append(torch.equal(after[key][closed], before[key][closed]))
                allowed_moved.append(not torch.equal(after[key][~closed], before[key][~closed]))
    return {"forbidden_unchanged": all(forbidden_unchanged), "allowed_moved": all(allowed_moved),
            "checked": len(forbidden_unchanged)}


def deepspeed_routing(
    rank: int, world_size: int, data_root: str, run_root: str, stages: list[int]
) -> list[dict]:
    """Per ZeRO stage: the exact-zero check on the engine, then a short GradSplit run through the
    trainer (rank 0 returns its final weights)."""
    from tests.helpers.dist_workers import cpu_only, train_weights

    cpu_only()
    out = []
    for stage in stages:
        zero = deepspeed_zero_gradients(rank, world_size, stage)
        overrides = [*DS_PARITY, f"data.batch_size={DS_GLOBAL_BATCH // world_size}", "strategy=deepspeed",
                     f"strategy.zero_stage={stage}", f"paths.run_dir={run_root}/zero{stage}"]
        out.append({**zero, **train_weights(rank, world_size, data_root, overrides)})
    return out
