"""PCGrad on the shared backbone, as a manual-optimization algorithm.

Per step: one forward, T per-task backward passes on the shared weights (``autograd.grad``,
no parameter gradients touched), the projection on the Gram matrix, then one backward through
``ctx.backward`` of a surrogate loss whose gradient is PCGrad's: ``sum_t w_t L_t`` on the shared
weights, each head trained by its own loss unchanged (heads read the features detached for
the ``1 - w_t`` share). Going through ``ctx.backward`` keeps DDP's all-reduce and every
strategy's backward; the cost is T + 1 backward passes per step.
"""

from __future__ import annotations

import torch
from torch import nn

from algorithms.pcgrad.losses import count_conflicts, pcgrad_weights
from framework.algorithm import Algorithm, Capabilities
from framework.config import ConfigError
from framework.losses import task_losses
from framework.models import build_multitask

#: why PCGrad stays off DeepSpeed (the capability check names the strategy; this says why)
DEEPSPEED_REFUSAL = (
    "strategy.name: algorithm 'pcgrad' cannot run under strategy 'deepspeed': PCGrad needs every task's "
    "whole gradient of the shared weights before any reduction across ranks (one torch.autograd.grad per "
    "task, projected on their Gram matrix), while DeepSpeed's engine treats every backward through its "
    "model as its own (it reduces, partitions and clears the gradients at its end) and, at ZeRO stage 3, "
    "no rank holds the whole weights; use strategy=ddp or strategy=single"
)


class SharedFeatureNet(nn.Module):
    """A multi-task net whose forward can also return each head applied to detached features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, with_detached: bool = False) -> dict[str, torch.Tensor]:
        z = self.net.backbone(x)
        out = {t: head(z) for t, head in self.net.heads.items()}
        if with_detached:
            zd = z.detach()
            out.update({f"{t}/detached": head(zd) for t, head in self.net.heads.items()})
        return out


class PCGrad(Algorithm):
    """ "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), summed projected
    gradients on the backbone. Reads ``algorithm.global_projection``."""

    capabilities = Capabilities(strategies=("single", "ddp"), manual_optimization=True, accumulation=False)

    def __init__(self, config, full_config=None):
        super().__init__(config, full_config)
        if getattr(getattr(full_config, "strategy", None), "name", None) == "deepspeed":
            raise ConfigError(DEEPSPEED_REFUSAL)
        if full_config is not None and full_config.trainer.accumulate_grad_batches > 1:
            raise ValueError(
                "trainer.accumulate_grad_batches: algorithm 'pcgrad' steps once per batch (manual "
                "optimization); set it to 1"
            )
        self.tasks: list[str] = []

    def build_model(self, data_info) -> nn.Module:
        self.tasks = list(data_info.tasks)
        return SharedFeatureNet(build_multitask(self.full_config.model, data_info))

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        out = model(batch["image"], with_detached=True)
        labels = batch["labels"]
        losses = task_losses({t: out[t] for t in self.tasks}, labels)
        detached = task_losses({t: out[f"{t}/detached"] for t in self.tasks}, labels)
        shared = [p for p in ctx.unwrap(model).net.backbone.parameters() if p.requires_grad]
        rows = []
        for t in self.tasks:
            grads = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, shared)]
                )
            )
        stacked = torch.stack(rows).double()  # float64 Gram: the weights must not be rounded away
        if self.config.global_projection and ctx.world_size > 1:
            stacked = ctx.all_reduce(stacked, "sum") / ctx.world_size
        gram = (stacked @ stacked.t()).cpu()
        weights = pcgrad_weights(gram, self._orders(ctx))
        ctx.log("pcgrad/conflicts", count_conflicts(gram))
        surrogate = sum(
            float(w) * losses[t] + (1.0 - float(w)) * detached[t] for w, t in zip(weights, self.tasks)
        )
        ctx.backward(surrogate)
        ctx.step("main")
        return {t: v.detach() for t, v in losses.items()}

    def _orders(self, ctx) -> list[list[int]]:
        """Random projection orders, the same on every rank (seeded by the seed and the step)."""
        seed = int(ctx.config.trainer.seed) * 1_000_003 + int(ctx.global_step)
        g = torch.Generator().manual_seed(seed)
        return [torch.randperm(len(self.tasks), generator=g).tolist() for _ in self.tasks]
