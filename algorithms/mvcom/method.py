"""MvCoM (reconstructed): per-sample multi-variation cosine margins learned on a held-out meta set.

Liu, Yu, Tsai, Faraki, Moslemi, Chandraker, Fu, "Learning to Learn across Diverse Data Biases in
Deep Face Recognition", CVPR 2022. **The paper's text was not available**: the mechanism is a
reconstruction from its abstract and its patent (US 2022/0147767): variation factors per sample,
a sample-level cosine margin, an additive model of it, class-level × sample-level weights and a
one-step look-ahead update on a held-out meta set (L2RW applied to margins). Everything the
sources leave open is a config switch whose default is the reconstruction's choice ([INF] in
``MvCoMConfig``): the table form of the additive model (``mode``), the margin as the place of
the importance (``apply``), clip range, bound and frequency centring of φ, the meta warm-up,
Adam on φ, α = the model's LR, uniform-margin CosFace on the meta batch (``meta_objective``),
a constant class margin (``class_margin``) and unit class weights (``class_weight``), the
look-ahead over the whole network (``lookahead``).

Per step (``manual_optimization``; optimizers ``main`` for the face model, ``margin`` for φ):

1. when a meta update is due (``meta_every``, after ``meta_warmup`` of the phase): the look-ahead
   meta step of ``algorithms.mvcom.meta`` on the training batch and a batch of the balanced meta
   set (``ctx.aux(meta_aux)``), ``ctx.step("margin")``, then φ centred and bounded;
2. the real step with the updated margins held constant (the patent's "upgraded" gradient):
   ``ctx.backward``, gradients averaged over ranks, ``ctx.step("main")``.

Both run on the unwrapped network (``ctx.unwrap``): a data-parallel wrapper would synchronise the
look-ahead's inner gradient as if it were the real one, so gradients are averaged here. Variation
factors are per-sample attributes (``algorithm.factors``, e.g. the faces dataset's ``light``,
``glasses``, ``expression`` and its synthetic ``blur`` and ``occlusion``); the training frequency
of each level (π) comes from the dataset's ``level_counts``. φ and π are the owned module
(checkpointed, with φ's optimizer state); the table is logged every ``table_every`` steps as
``train/mvcom/phi/<factor>/<level>`` and written to ``margin_table.json`` / ``margin_table.md``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from algorithms._face.heads import margin_loss
from algorithms._face.model import build_face_net
from algorithms.mvcom.margins import MarginTable, inverse_frequency_weights, ldam_margins
from algorithms.mvcom.meta import MODES, OBJECTIVES, MetaSettings, factor_levels, regress_step, table_step
from algorithms.mvcom.metrics import GroupedRank1
from framework.algorithm import Algorithm, Capabilities
from framework.lookahead import average_grads, trainable
from framework.metrics.verification import Verification

log = logging.getLogger(__name__)

CHOICES = {"mode": MODES, "meta_objective": OBJECTIVES, "class_margin": ("constant", "ldam"),
           "class_weight": ("none", "inverse_freq"), "meta_optim": ("adam", "sgd"), "head": ("cosface", "arcface")}


class MvCoM(Algorithm):
    # The look-ahead needs every full parameter and gradient on every rank (ZeRO shards them) and
    # φ lives outside the model: DeepSpeed is refused; the double backward runs in fp32.
    capabilities = Capabilities(strategies=("single", "ddp"), precisions=("fp32",), accumulation=False,
                                manual_optimization=True)

    def __init__(self, config, full_config=None):
        super().__init__(config, full_config)
        c = config
        for key, allowed in CHOICES.items():
            if getattr(c, key) not in allowed:
                raise ValueError(f"algorithm.{key}: '{getattr(c, key)}' is not one of {', '.join(allowed)}")
        if c.margin_min > c.margin_max:
            raise ValueError(f"algorithm.margin_min={c.margin_min} exceeds algorithm.margin_max={c.margin_max}")
        self.settings = MetaSettings(alpha=c.alpha, objective=c.meta_objective, lookahead=list(c.lookahead),
                                     eta=c.regress_eta, ema=c.regress_ema)
        self.table: MarginTable | None = None
        self.level_names: list[list[str]] = []

    # --- model and margin table ------------------------------------------------------------
    def _training_splits(self, data_info) -> list[str]:
        counts = data_info.extra.get("level_counts", {})
        data = getattr(self.full_config, "data", None)
        chosen = list(getattr(data, "train_sources", []) or [])
        holdout = data_info.extra.get("holdout_domain", "")
        splits = [s for s in counts if s == "train" or s.startswith("train.")]
        if chosen:
            splits = [s for s in splits if s.split(".", 1)[-1] in chosen]
        return [s for s in splits if not holdout or s != f"train.{holdout}"]

    def _level_frequencies(self, data_info) -> torch.Tensor:
        counts = data_info.extra.get("level_counts")
        width = max((len(n) for n in self.level_names), default=1)
        freq = torch.zeros(len(self.level_names), width, dtype=torch.float64)
        if not counts:
            log.warning("dataset '%s' records no level_counts: frequency centring of the margin table "
                        "weights every level equally", data_info.name)
            return freq  # MarginTable treats an all-zero row as uniform
        for split in self._training_splits(data_info):
            for k, name in enumerate(self.config.factors):
                row = counts[split].get(name, [])
                freq[k, : len(row)] += torch.tensor(row, dtype=torch.float64)
        return freq

    def _class_terms(self, data_info, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        margin, weight = torch.full((num_classes,), float(c.margin)), torch.ones(num_classes)
        if c.class_margin == "constant" and c.class_weight == "none":
            return margin, weight
        counts = data_info.extra.get("identity_counts")
        if counts is None or len(counts) != num_classes:
            raise ValueError(f"algorithm.class_margin={c.class_margin} / class_weight={c.class_weight} need the "
                             f"training images per identity (extra['identity_counts'], one per class) from dataset "
                             f"'{data_info.name}'; use class_margin=constant class_weight=none")
        counts = torch.tensor(counts, dtype=torch.float64)
        if c.class_margin == "ldam":
            margin = ldam_margins(counts, c.margin, c.ldam_power)
        if c.class_weight == "inverse_freq":
            weight = inverse_frequency_weights(counts)
        return margin, weight

    def build_model(self, data_info) -> nn.Module:
        if "identity" not in data_info.tasks:
            raise ValueError(f"algorithm 'mvcom' needs an 'identity' task; dataset '{data_info.name}' has "
                             f"{sorted(data_info.tasks)}")
        c = self.config
        attributes = data_info.extra.get("attributes", {})
        missing = [f for f in c.factors if f not in attributes]
        if missing:
            raise ValueError(f"algorithm.factors: {missing} are not attributes of dataset '{data_info.name}' "
                             f"(it has {sorted(attributes)}); for faces, data.synthetic=[blur, occlusion] adds "
                             f"the synthetic ones")
        self.level_names = [list(attributes[f]) for f in c.factors]
        num_classes = data_info.tasks["identity"]
        class_margin, class_weight = self._class_terms(data_info, num_classes)
        self.table = MarginTable([len(n) for n in self.level_names], self._level_frequencies(data_info),
                                 class_margin, class_weight, c.margin, c.margin_min, c.margin_max, c.bound,
                                 c.center, c.apply)
        return build_face_net(self.full_config.model, tuple(data_info.image_shape), num_classes, c.embedding_dim,
                              triplet_dim=1, scale=c.scale, margin=c.margin, kind=c.head)

    def owned_module(self) -> nn.Module | None:
        return self.table

    def configure_optimizers(self, model, ctx) -> dict:
        from framework.optim import default_optimizer

        c = self.config
        main = default_optimizer(model, None, ctx.config, ctx.phase_steps,
                                 ctx.phase_spec.optim if ctx.phase_spec else None)
        opt = torch.optim.Adam if c.meta_optim == "adam" else torch.optim.SGD
        return {"main": main, "margin": (opt(self.table.parameters(), lr=c.meta_lr), None)}

    # --- training ------------------------------------------------------------------------------
    def meta_due(self, ctx) -> bool:
        c = self.config
        if c.meta_every == 0 or not c.factors:
            return False
        return ctx.phase_step >= round(c.meta_warmup * ctx.phase_steps) and ctx.global_step % c.meta_every == 0

    def _meta_batch(self, ctx) -> dict:
        try:
            return next(ctx.aux(self.config.meta_aux))
        except KeyError as exc:
            raise KeyError(f"algorithm.meta_aux='{self.config.meta_aux}': {exc.args[0]}; declare it under data.aux, "
                           f"e.g. data.aux={{meta: {{split: meta, batch_size: 64}}}}") from None

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        if not isinstance(batch, dict) or "image" not in batch:
            raise TypeError("algorithm 'mvcom' trains on plain batches (data.episodic=false)")
        c, net, table = self.config, ctx.unwrap(model), self.table
        reduce, world = ctx.rank_sum, ctx.world_size
        levels, labels = factor_levels(batch, c.factors), batch["labels"]["identity"]
        if self.meta_due(ctx):
            meta_batch = self._meta_batch(ctx)
            self.settings.alpha = c.alpha or ctx.optimizers["main"].param_groups[0]["lr"]
            step = table_step if c.mode == "table" else regress_step
            logs = step(net, table, batch, levels, meta_batch, factor_levels(meta_batch, c.factors), self.settings,
                        reduce, world)
            if c.mode == "table":
                ctx.step("margin")
            table.project_()
            for key, value in logs.items():
                ctx.log(f"mvcom/{key}", value)
        margin, weight = table(levels, labels, detach=True)
        out = net(batch["image"], labels, margin)
        loss = (weight * margin_loss(out["logits"], labels, reduction="none")).mean()
        ctx.backward(loss)
        average_grads(trainable(net).values(), reduce, world)
        ctx.step("main")
        ctx.log("mvcom/margin_mean", margin.mean())
        if (ctx.global_step + 1) % c.table_every == 0:
            self.log_table(ctx, ctx.global_step + 1)
        return {"cls": loss.detach()}

    def on_phase_end(self, phase, model, ctx) -> None:
        self.log_table(ctx, ctx.global_step)

    # --- the learned table -----------------------------------------------------------------------
    def table_rows(self) -> dict:
        """``{factor: {level_name: {"phi": φ, "freq": π}}}`` of the current table."""
        phi, freq = self.table.phi.detach().cpu(), self.table.freq.cpu()
        return {f: {name: {"phi": float(phi[k, level]), "freq": float(freq[k, level])}
                    for level, name in enumerate(self.level_names[k])}
                for k, f in enumerate(self.config.factors)}

    def log_table(self, ctx, step: int) -> None:
        rows = self.table_rows()
        for factor, levels in rows.items():
            for name, entry in levels.items():
                ctx.log(f"mvcom/phi/{factor}/{name}", entry["phi"])
        if ctx.rank != 0 or ctx.run_dir is None:
            return
        write_table(Path(ctx.run_dir), step, rows)

    # --- evaluation -------------------------------------------------------------------------------
    def build_metrics(self, data_info) -> dict:
        exclude = data_info.extra.get("exclude_pairs")
        exclude = torch.tensor(exclude, dtype=torch.long) if exclude else None
        majority = [int(self.table.freq[k, : len(n)].argmax()) for k, n in enumerate(self.level_names)]
        return {"identity/verify": Verification(exclude=exclude),
                "identity/groups": GroupedRank1(list(self.config.factors), [len(n) for n in self.level_names],
                                                majority, exclude)}

    @torch.no_grad()
    def embed(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        emb = model(images)["emb"]
        if self.config.flip_test:
            emb = torch.cat([emb, model(images.flip(-1))["emb"]], dim=1)
        return emb

    def evaluate(self, model, batch, metrics, ctx) -> None:
        who = batch.get("person", batch["labels"]["identity"])  # held-out identities are named by ``person``
        mask = batch.get("mask", torch.ones_like(who, dtype=torch.bool))
        if not mask.any():
            return
        emb = self.embed(model, batch["image"])
        metrics["identity/verify"].update(emb, who, batch["id"], mask)
        metrics["identity/groups"].update(emb, who, factor_levels(batch, self.config.factors), batch["id"], mask)


def write_table(run_dir: Path, step: int, rows: dict) -> None:
    """``margin_table.json`` (machine-readable) and ``margin_table.md`` (a table per factor), atomically."""
    doc = {"step": step, "factors": rows}
    lines = [f"# MvCoM margin table at step {step}", "",
             "φ: learned margin offset of the level; π: its training frequency.", ""]
    for factor, levels in rows.items():
        lines += [f"## {factor}", "", "| level | φ | π |", "|---|---|---|"]
        lines += [f"| {name} | {e['phi']:+.4f} | {e['freq']:.3f} |" for name, e in levels.items()] + [""]
    for name, text in (("margin_table.json", json.dumps(doc, indent=1)), ("margin_table.md", "\n".join(lines))):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / name)
