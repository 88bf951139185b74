"""UniSeg (Kim et al., "Learning Semantic Segmentation from Multiple Datasets with Label Shifts",
ECCV 2022) as a two-phase plugin.

``stage1``: the loss of ``algorithm.loss`` in the unified label space (``bce_null`` is UniSeg's;
``ce`` and ``bce`` are the baselines). ``stage2`` (``relational=true``): when it starts, one pass
over the training splits measures class relations (``relations.py``) through ``ctx.batches`` and
``ctx.all_reduce``, so every rank derives the same targets; then the class-relational BCE trains
with the phase's own optimizer. The relations are algorithm state (in every checkpoint, so a run
resumed inside stage 2 keeps them), logged, and written to ``relations.md`` / ``relations.json``
in the run directory. Config keys: ``UniSegConfig``.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

from algorithms.uniseg.evaluation import SegEvaluator, find_conflicts
from algorithms.uniseg.labels import LabelSpace, lookup
from algorithms.uniseg.losses import bce_masked, ce_unified, class_relational_bce, labelled
from algorithms.uniseg.relations import measure, relation_list, relation_table, relation_targets
from framework.algorithm import Algorithm, Capabilities
from framework.models.segmentation import HEADS, build_segmentation
from framework.phases import Phase

log = logging.getLogger("medley")

LOSSES = ("ce", "bce", "bce_null")
OPTIMIZERS = ("sgd", "adam", "adamw")


class UniSeg(Algorithm):
    capabilities = Capabilities(strategies=("single", "ddp"))

    def __init__(self, config, full_config=None):
        super().__init__(config, full_config)
        for key, allowed in (("loss", LOSSES), ("head", HEADS), ("stage2_optimizer", OPTIMIZERS)):
            if getattr(config, key) not in allowed:
                raise ValueError(f"algorithm.{key}: '{getattr(config, key)}' is not one of {', '.join(allowed)}")
        self.relations: dict[str, torch.Tensor] | None = None  # mean_logit, pixels, targets

    # --- phases -------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        c = self.config
        sets = tuple(c.phase_eval_sets)
        stage1 = Phase("stage1", eval_sets=sets)
        if not c.relational:
            return [stage1]
        optim = {"name": c.stage2_optimizer, "lr": c.stage2_lr, "weight_decay": c.stage2_weight_decay,
                 "warmup_steps": 0}
        return [stage1, Phase("stage2", share=c.stage2_share, optim=optim, eval_sets=sets)]

    def build_model(self, data_info) -> nn.Module:
        c = self.config
        self.space = LabelSpace.from_manifest(data_info.extra)
        self.class_mask = self.space.class_mask()
        self.to_unified = self.space.to_unified()
        self.evaluator = SegEvaluator(self.space, find_conflicts(self.space, data_info.extra.get("relations", {})))
        self.stats_splits = list(c.stats_splits) or [f"train.{s}" for s in data_info.extra.get("train_sources", [])]
        return build_segmentation(self.full_config.model, data_info.image_shape[0], self.space.num_classes,
                                  head=c.head, scale=c.scale, width=c.decoder_width or None,
                                  rates=tuple(c.aspp_rates))

    # --- training -----------------------------------------------------------------------
    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        logits = model(batch["image"]).float()
        target = lookup(self.to_unified, batch["dense"]["seg"])
        domain = batch["domain"]
        denominator = labelled_per_rank(target, ctx)
        if ctx.phase == "stage2":
            if self.relations is None:
                raise RuntimeError("uniseg stage2 has no relation targets: the statistics pass did not run and the "
                                   "checkpoint held none; resume from a stage-1 checkpoint instead")
            rows = self.relations["targets"].to(logits.device)[domain]
            return {"cr_bce": class_relational_bce(logits, target, rows, denominator)}
        loss = self.config.loss
        if loss == "ce":
            return {"ce": ce_unified(logits, target, denominator)}
        mask = self.class_mask.to(logits.device)[domain] if loss == "bce_null" else None
        return {loss: bce_masked(logits, target, mask, denominator)}

    def on_phase_start(self, phase: str, model: nn.Module, ctx) -> None:
        if phase != "stage2":
            return
        d, k = len(self.space.datasets), self.space.num_classes
        stats = measure(ctx.unwrap(model), self._stats_batches(ctx), self.to_unified, d, k, ctx.all_reduce,
                        ctx.device)
        targets = relation_targets(stats["mean_logit"].sigmoid(), stats["pixels"], self.class_mask, self.config.tau)
        self.relations = {**stats, "targets": targets}
        self._report(ctx)

    def _stats_batches(self, ctx):
        for split in self.stats_splits:
            try:
                batches = ctx.batches(split)
                yield from batches
            except KeyError as exc:
                raise ValueError(f"algorithm.stats_splits: cannot read split '{split}' for the statistics pass "
                                 f"({exc}); list the training splits explicitly") from None

    def _report(self, ctx) -> None:
        found = relation_list(self.relations["targets"], self.space.datasets, self.space.names,
                              self.relations["pixels"])
        n = sum(len(r["related"]) for r in found)
        ctx.log("uniseg/relations", n)
        if ctx.rank != 0:
            return
        for r in found:
            if r["related"]:
                log.info("uniseg relation: %s:%s -> %s", r["dataset"], r["class"], ", ".join(r["related"]))
        log.info("uniseg: %d class relations (tau=%.4g)", n, self.config.tau)
        if ctx.run_dir is None:
            return
        run_dir = ctx.run_dir
        table = relation_table(self.relations, self.space.datasets, self.space.names, self.config.tau)
        doc = {"tau": self.config.tau, "classes": self.space.names, "datasets": self.space.datasets,
               "relations": found, "mean_prob": self.relations["mean_logit"].sigmoid().tolist(),
               "pixels": self.relations["pixels"].tolist()}
        for name, text in (("relations.md", table), ("relations.json", json.dumps(doc, indent=1))):
            tmp = run_dir / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, run_dir / name)

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"relations": dict(self.relations)} if self.relations is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "relations" in state:
            self.relations = {k: v.cpu() for k, v in state["relations"].items()}

    # --- evaluation ---------------------------------------------------------------------
    def build_metrics(self, data_info) -> dict:
        return self.evaluator.metrics()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model says a class's probability is: softmax for the CE model, sigmoid for BCE ones."""
        if self.config.loss == "ce" and not self.config.relational:
            return logits.softmax(dim=1)
        return logits.sigmoid()

    def evaluate(self, model, batch, metrics, ctx) -> None:
        logits = model(batch["image"]).float()
        target = lookup(self.to_unified, batch["dense"]["seg"])
        mask = batch.get("mask", torch.ones(len(target), dtype=torch.bool, device=target.device))
        self.evaluator.update(metrics, logits, target, batch["domain"], mask, self.probabilities)


def labelled_per_rank(target: torch.Tensor, ctx) -> torch.Tensor:
    """The loss denominator: labelled pixels of the global batch per rank. With DDP averaging the ranks'
    gradients, ``sum_r / (N / W)`` averaged over W ranks is the global-batch ``Σ / N``."""
    n = labelled(target).sum().double()
    if ctx.world_size == 1:
        return n
    return ctx.all_reduce(n.clone(), "sum") / ctx.world_size
