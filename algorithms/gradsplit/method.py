"""GradSplit as a Medley algorithm: routing in the autograd graph, one backward per step."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from algorithms.gradsplit.model import GradSplitNet
from algorithms.gradsplit.relation import LookaheadAffinity, initial_relation
from algorithms.gradsplit.routing import keep_only_task, labelled_task, random_task
from framework.algorithm import Algorithm, Capabilities
from framework.config import ConfigError
from framework.losses import task_losses
from framework.models import build_multitask

log = logging.getLogger("medley")

MODES = ("per_sample", "exact", "random_task")


class GradSplit(Algorithm):
    """ "Split to Learn: Gradient Split for Multi-Task Human Image Analysis" (Deng et al., WACV 2023).

    The channels of every split module are divided into one group per task; task t's loss
    trains group g only where ``R[g][t] = 1``. The forward is the hard-shared network's, so
    inference costs one network. Reads ``algorithm.{relation, relation_file, pairwise_eps,
    lookahead_*, split_modules, mode, task_bn, bn_running_stats, min_group_channels, tasks}``.

    Modes: ``per_sample`` — each sample is labelled for one task (multi-source data);
    ``exact`` — fully labelled samples, the split section runs once per task on a copy of the
    batch (cost 1 + (T-1) x the split section's share); ``random_task`` — fully labelled samples,
    each assigned one task per step (1x cost, 1/T of the labels per step)."""

    # routing masks activation gradients inside one backward, which no ZeRO stage touches: every
    # strategy runs it (tested: DDP, ZeRO-1/2/3); only the look-ahead relation stays off DeepSpeed
    capabilities = Capabilities(strategies=("single", "ddp", "deepspeed"))

    def __init__(self, config: Any, full_config: Any = None):
        super().__init__(config, full_config)
        if config.mode not in MODES:
            raise ValueError(f"algorithm.mode: '{config.mode}' is not one of {', '.join(MODES)}")
        strategy = getattr(getattr(full_config, "strategy", None), "name", None)
        if config.relation == "lookahead" and strategy == "deepspeed":
            raise ConfigError(
                "algorithm.relation=lookahead cannot run under strategy=deepspeed: the look-ahead takes each "
                "task's gradient with torch.autograd.grad through the model, and DeepSpeed's engine treats "
                "every backward through its model as its own (it reduces and clears the gradients at its "
                "end). Measure R under strategy=ddp (the run logs it) and pass it as "
                "algorithm.relation=[[...]]"
            )
        self.tasks: list[str] = []
        self.affinity: LookaheadAffinity | None = None
        self.relation_fixed = config.relation != "lookahead"
        self._batch: tuple | None = None

    # --- model -------------------------------------------------------------------------------
    def build_model(self, data_info) -> nn.Module:
        cfg = self.config
        self.tasks = list(cfg.tasks) if cfg.tasks else list(data_info.tasks)
        unknown = [t for t in self.tasks if t not in data_info.tasks]
        if unknown:
            raise ValueError(f"algorithm.tasks: {unknown} not in the dataset's tasks {list(data_info.tasks)}")
        net = build_multitask(self.full_config.model, data_info, {t: data_info.tasks[t] for t in self.tasks})
        relation = initial_relation(cfg, self.tasks)
        if cfg.relation == "lookahead":
            self.affinity = LookaheadAffinity(len(self.tasks))
        return GradSplitNet(
            net,
            self.tasks,
            relation,
            cfg.split_modules,
            cfg.task_bn,
            cfg.bn_running_stats,
            cfg.min_group_channels,
        )

    # --- training ------------------------------------------------------------------------------
    def route(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """(images, labels, per-sample task ids or None for the replicated exact mode)."""
        images, labels = batch["image"], {t: batch["labels"][t] for t in self.tasks}
        if "mask" in batch:  # padding rows carry no label
            labels = {t: torch.where(batch["mask"], v, torch.full_like(v, -1)) for t, v in labels.items()}
        if self.config.tasks:  # a task subset: drop rows labelled for none of its tasks
            keep = torch.stack([v >= 0 for v in labels.values()], 1).any(1)
            if not bool(keep.all()):
                images, labels = images[keep], {t: v[keep] for t, v in labels.items()}
        if self.config.mode == "exact":
            return images, labels, None
        if self.config.mode == "random_task":
            ids = random_task(labels, self.tasks)
            return images, keep_only_task(labels, self.tasks, ids), ids
        return images, labels, labelled_task(labels, self.tasks)

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        images, labels, ids = self.route(batch)
        outputs = model(images, replicate=True) if ids is None else model(images, task_ids=ids)
        losses = task_losses(outputs, labels)
        self._batch = (model, images, labels, ids) if self._measuring(ctx) else None
        return losses

    def backward(self, losses: dict[str, torch.Tensor], ctx) -> None:
        """One backward of the summed losses; during a look-ahead warm-up, first the affinity."""
        if self._batch is not None and not ctx.bad_step:
            self._measure(losses, ctx)
        self._batch = None
        ctx.backward(sum(losses.values()))

    def after_step(self, model: nn.Module, ctx) -> None:
        if (
            self.affinity is not None
            and not self.relation_fixed
            and ctx.global_step >= self.config.lookahead_steps
        ):
            z = self.affinity.mean(lambda t: ctx.all_reduce(t.to(ctx.device), "sum").cpu())
            relation = LookaheadAffinity.relation(z)
            ctx.unwrap(model).set_relation(relation)
            self.relation_fixed = True
            if ctx.rank == 0:
                log.info(
                    "gradsplit: look-ahead affinity Z[i][j] (j's step on i) = %s -> R = %s",
                    [[round(v, 4) for v in row] for row in z.tolist()],
                    relation.int().tolist(),
                )

    # --- look-ahead ----------------------------------------------------------------------------
    def _measuring(self, ctx) -> bool:
        cfg = self.config
        return (
            self.affinity is not None
            and not self.relation_fixed
            and ctx.global_step < cfg.lookahead_steps
            and ctx.global_step % max(cfg.lookahead_every, 1) == 0
        )

    def _measure(self, losses: dict[str, torch.Tensor], ctx) -> None:
        model, images, labels, ids = self._batch
        net = ctx.unwrap(model)
        shared = [(f"net.backbone.{k}", p) for k, p in net.net.backbone.named_parameters() if p.requires_grad]
        names, params = [k for k, _ in shared], [p for _, p in shared]
        buffers = {k: b.clone() for k, b in net.named_buffers()}  # the look-ahead must not move BN statistics
        lr = self.config.lookahead_lr or ctx.optimizers["main"].param_groups[0]["lr"]
        def evaluate(moved: dict[str, torch.Tensor]) -> list[torch.Tensor]:
            kwargs = {"replicate": True} if ids is None else {"task_ids": ids}
            with ctx.autocast():
                out = functional_call(net, {**buffers, **moved}, (images,), kwargs)
            new = task_losses(out, labels)
            return [new[t] for t in self.tasks]

        self.affinity.measure([losses[t] for t in self.tasks], params, lr, evaluate, names)

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"relation_fixed": self.relation_fixed}
        if self.affinity is not None:
            state["affinity"] = self.affinity.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.relation_fixed = bool(state.get("relation_fixed", self.relation_fixed))
        if self.affinity is not None and "affinity" in state:
            self.affinity.load_state_dict(state["affinity"])
