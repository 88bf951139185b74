"""DYMU as phases of one resumable run, and its baselines on the same streams.

``dymu``: ``pretrain`` (one stream, all tasks: the shared initialisation) → ``anchor`` (the stream
copied into N streams, each fine-tuned on its own task) → ``affinity`` (no steps: RSA affinity and
loss scales from the frozen anchor) → ``edge`` (edge hypernetwork + Ω, anchor frozen) →
``weight`` (BatchNorm hypernetwork on the argmax tree, anchor and edge hypernetwork frozen).
``phn_bn``: ``pretrain`` → ``scales`` → ``weight`` on the hard-shared stream (fixed architecture).
``hard_sharing``: ``pretrain`` only. ``single_task``: ``pretrain`` → ``anchor``.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from algorithms.dymu.affinity import rsa_affinity, stream_features
from algorithms.dymu.anchor import AnchorNet, TreeNet, anchor_tree, cost_table, describe, shared_tree
from algorithms.dymu.hypernetworks import (EdgeHyperNet, WeightHyperNet, draw_control, gumbel_noise,
                                           gumbel_softmax, temperature)
from algorithms.dymu.regulariser import omega, usage_probability, usage_probability_exact
from algorithms.dymu.tasks import (Confusion, Constant, LossMean, Uniformity, class_weights, discover_tasks,
                                   loss_sum, target)
from framework.algorithm import Algorithm, Capabilities
from framework.phases import Phase

log = logging.getLogger("medley")

HYPER_PHASES = ("edge", "weight")
CHOICES = {"variant": ("dymu", "phn_bn", "hard_sharing", "single_task"), "usage": ("auto", "exact", "independent"),
           "loss_scales": ("anchor", "none"), "eval_tree": ("auto", "derived", "anchor", "shared")}


class DymuNet(AnchorNet):
    """The anchor plus the hypernetworks attached at their stages (``edge_hyper``, ``weight_hyper``).
    ``control`` runs a hypernetwork stage inside ``forward``, so DDP sees (and syncs) its gradients."""

    def forward(self, x, mix=None, tree=None, deltas=None, control: dict | None = None):
        if control is None:
            return super().forward(x, mix=mix, tree=tree, deltas=deltas)
        # one (r, c) per group of rows: control["pref"] is [K, N], the batch is split into K groups
        groups = torch.tensor_split(x, control["pref"].shape[0])
        outs, alphas, nus = [], [], []
        for g, xg in enumerate(groups):
            pref, budget = control["pref"][g], control["budget"][g]
            if control["stage"] == "edge":
                alpha = self.edge_hyper(pref, budget)
                nu = gumbel_softmax(alpha, control["noise"][g], control["tau"], control["hard"])
                outs.append(super().forward(xg, mix=nu))
                alphas.append(alpha)
                nus.append(nu)
            else:
                routed = control.get("tree") or self.derive(pref, budget)
                outs.append(super().forward(xg, tree=routed, deltas=self.weight_hyper(pref, budget)))
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return (out, torch.stack(alphas), torch.stack(nus)) if control["stage"] == "edge" else out

    @torch.no_grad()
    def derive(self, pref: torch.Tensor, budget: float) -> tuple[list[list[int]], list[int]]:
        """The maximum-likelihood tree: every child takes its most probable parent."""
        alpha = self.edge_hyper(pref, budget)
        return alpha.argmax(-1).tolist(), list(range(self.n_tasks))


class Dymu(Algorithm):
    capabilities = Capabilities(strategies=("single", "ddp"), precisions=("fp32",))

    def __init__(self, config, full_config=None):
        super().__init__(config, full_config)
        for key, allowed in CHOICES.items():
            if getattr(config, key) not in allowed:
                raise ValueError(f"algorithm.{key}={getattr(config, key)!r}: must be one of {', '.join(allowed)}")
        self.affinity: torch.Tensor | None = None
        self.scales: list[float] | None = None
        self.control: tuple[list[float], float] | None = None  # set_control(); else the config's
        self._costs = None
        self._eval_cache: tuple | None = None

    # ------------------------------------------------------------------------- structure
    def phases(self):
        c = self.config
        ev = tuple(c.phase_eval or ())
        shares = {"pretrain_share": c.pretrain_share, "anchor_share": c.anchor_share, "edge_share": c.edge_share}
        if sum(shares.values()) > 1:
            raise ValueError(f"algorithm.{'+'.join(shares)} = {sum(shares.values()):.3f} > 1: the shares of "
                             f"trainer.max_steps must leave the weight phase a part")
        pretrain = Phase("pretrain", share=c.pretrain_share, trainable=("streams.0", "heads"), eval_sets=ev)
        if c.variant == "hard_sharing":
            return [Phase("pretrain", trainable=("streams.0", "heads"), eval_sets=ev)]
        if c.variant == "phn_bn":
            return [pretrain, Phase("scales", steps=0),
                    Phase("weight", trainable=("weight_hyper",), eval_sets=ev)]
        anchor_share = c.anchor_share if c.shared_init else c.anchor_share + c.pretrain_share
        first = [pretrain] if c.shared_init else []
        if c.variant == "single_task":
            return [*first, Phase("anchor", trainable=("streams", "heads"), eval_sets=ev)]
        return [*first, Phase("anchor", share=anchor_share, trainable=("streams", "heads"), eval_sets=ev),
                Phase("affinity", steps=0),
                Phase("edge", share=c.edge_share, trainable=("edge_hyper",), eval_sets=ev),
                Phase("weight", trainable=("weight_hyper",), eval_sets=ev)]

    def build_model(self, data_info) -> DymuNet:
        m = self.full_config.model
        self.tasks = discover_tasks(data_info, list(self.config.tasks) if self.config.tasks else None)
        self.image_shape = tuple(data_info.image_shape)
        if m.norm == "none" and self.config.variant in ("dymu", "phn_bn"):
            raise ValueError("model.norm=none: the weight hypernetwork shifts the normalisation's affine "
                             "parameters; use model.norm=batch or group")
        return DymuNet(data_info.image_shape[0], list(m.widths), self.tasks, m.norm, m.stem_stride,
                       self.config.output_stride)

    def configure_model(self, phase, model, ctx):
        c, n, n_layers = self.config, model.n_tasks, model.n_layers
        if phase in HYPER_PHASES:
            model.freeze_statistics(True)  # the anchor is frozen, its statistics too
        if phase == "edge" and not hasattr(model, "edge_hyper"):
            model.edge_hyper = EdgeHyperNet(n, n_layers, c.embed_dim, c.edge_hidden, c.edge_depth, c.own_bias)
        if phase == "weight" and not hasattr(model, "weight_hyper"):
            streams = [0] if c.variant == "phn_bn" else range(n)
            nodes = {(l, j): model.node(l, j).channels for l in range(n_layers) for j in streams}
            model.weight_hyper = WeightHyperNet(n, nodes, c.embed_dim, c.weight_hidden, c.weight_depth)
        return model

    def configure_optimizers(self, model, ctx):
        if ctx.phase not in HYPER_PHASES:
            return super().configure_optimizers(model, ctx)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.config.hyper_lr)
        every = max(1, round(ctx.phase_steps * self.config.lr_decay_at))
        return {"main": (opt, torch.optim.lr_scheduler.StepLR(opt, step_size=every, gamma=self.config.lr_decay))}

    # ---------------------------------------------------------------------------- phases
    def on_phase_start(self, phase, model, ctx):
        if phase == "anchor" and self.config.shared_init:
            ctx.unwrap(model).copy_stream(0)

    def on_phase_end(self, phase, model, ctx):
        if phase in ("affinity", "scales"):
            net = ctx.unwrap(model)
            tree = shared_tree(net.n_tasks, net.n_layers) if phase == "scales" else None
            losses = self.split_losses(net, ctx, self.config.scale_split, tree)
            self.scales = [1.0 / v for v in losses] if self.config.loss_scales == "anchor" else [1.0] * len(losses)
            if phase == "affinity":
                self.affinity = self.measure_affinity(net, ctx)
            self.save_stage_file(ctx, losses)

    @torch.no_grad()
    def split_losses(self, net: AnchorNet, ctx, split: str, tree=None) -> list[float]:
        """Every task's mean loss over ``split`` (summed over ranks), statistics frozen."""
        was = net.training
        net.eval()
        sums = torch.zeros(2, len(self.tasks), dtype=torch.float64, device=ctx.device)
        for batch in ctx.batches(split):
            out = net(batch["image"], tree=tree)
            for i, t in enumerate(self.tasks):
                total, count = loss_sum(out[t.name], self.target(t, batch), self.weight_of(t, ctx.device),
                                        batch.get("mask"))
                sums[0, i] += total.double()
                sums[1, i] += count.double()
        ctx.all_reduce(sums, "sum")
        net.train(was)
        if (sums[1] == 0).any():
            raise ValueError(f"algorithm.scale_split={split}: a task has no labelled entry there")
        return (sums[0] / sums[1]).tolist()

    @torch.no_grad()
    def measure_affinity(self, net: AnchorNet, ctx) -> torch.Tensor:
        """RSA affinity of the first K images of ``affinity_split`` on each rank, averaged over ranks."""
        was = net.training
        net.eval()
        images, have = [], 0
        for batch in ctx.batches(self.config.affinity_split):
            rows = batch["image"][batch["mask"]] if "mask" in batch else batch["image"]
            images.append(rows[: self.config.affinity_samples - have])
            have += len(images[-1])
            if have >= self.config.affinity_samples:
                break
        affinity = rsa_affinity(stream_features(net, torch.cat(images))).to(ctx.device)
        net.train(was)
        return ctx.all_reduce(affinity.double(), "mean").float().cpu()

    def save_stage_file(self, ctx, losses: list[float]) -> None:
        if ctx.run_dir is None or ctx.rank != 0:
            return
        doc = {"tasks": [t.name for t in self.tasks], f"{self.config.scale_split}_loss": losses,
               "loss_scales": self.scales}
        if self.affinity is not None:
            doc["affinity"] = self.affinity.tolist()
        path = ctx.run_dir / "affinity.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)

    # ------------------------------------------------------------------------------ steps
    def target(self, task, batch):
        return target(task, batch, self.config.output_stride)

    def weight_of(self, task, device):
        return class_weights(task, list(self.config.balanced_tasks), self.config.pos_weight, device)

    def training_step(self, model, batch, ctx):
        x, c = batch["image"], self.config
        net = ctx.unwrap(model)
        if ctx.phase == "pretrain":  # one stream for every task: hard sharing, equal weights
            losses = self.task_losses(model(x, tree=shared_tree(net.n_tasks, net.n_layers)), batch, ctx)[0]
            return {t.name: losses[i] for i, t in enumerate(self.tasks)}
        if ctx.phase == "anchor":  # every stream on its own task
            losses = self.task_losses(model(x), batch, ctx)[0]
            return {t.name: losses[i] for i, t in enumerate(self.tasks)}
        if self.scales is None:
            raise RuntimeError(f"phase '{ctx.phase}' needs the loss scales of the affinity/scales phase")
        draws = [draw_control(self.full_config.trainer.seed, ctx.global_step, net.n_tasks, c.dirichlet, g)
                 for g in range(c.prefs_per_step)]
        prefs = torch.as_tensor(np.stack([d[0] for d in draws]), dtype=torch.float32, device=x.device)
        budgets = [d[1] for d in draws]
        control = {"stage": ctx.phase, "pref": prefs, "budget": budgets}
        if ctx.phase == "edge":
            tau = temperature(ctx.phase_step, ctx.phase_steps, c.tau_start, c.tau_decay, c.tau_decays)
            shape = (net.n_layers - 1, net.n_tasks, net.n_tasks)
            control.update(noise=torch.stack([gumbel_noise(d[2], shape) for d in draws]).to(x.device), tau=tau,
                           hard=c.gumbel_hard)
            out, alpha, nu = model(x, control=control)
            losses = self.preference_losses(out, batch, prefs, ctx)
            affinity = self.affinity.to(x.device)
            regs = [omega(nu[g], alpha[g], affinity, prefs[g], budgets[g], c.lambda_active, c.lambda_inactive,
                          c.active_threshold, exact=self.exact_usage(net.n_tasks)) for g in range(len(draws))]
            losses["omega_active"] = sum(r["active"] for r in regs) / len(regs)
            losses["omega_inactive"] = sum(r["inactive"] for r in regs) / len(regs)
            ctx.log("tau", tau)
            usage = usage_probability_exact if self.exact_usage(net.n_tasks) else usage_probability
            ctx.log("expected_nodes", usage(alpha[0].detach()).sum())
            return losses
        if c.variant == "phn_bn":
            control["tree"] = shared_tree(net.n_tasks, net.n_layers)
        return self.preference_losses(model(x, control=control), batch, prefs, ctx)

    def exact_usage(self, n_tasks: int) -> bool:
        return self.config.usage == "exact" or (self.config.usage == "auto" and n_tasks <= 8)

    def task_losses(self, out, batch, ctx, groups: int = 1) -> torch.Tensor:
        """``[groups, N]``: each task's loss over the labelled entries of each group of rows (the batch split
        in ``groups``), divided by the weight sum of that group over the *global* batch (summed over ranks),
        so DDP's gradient average equals one process with the whole batch (class-weighted edges make
        per-rank means differ)."""
        rows = torch.tensor_split(torch.arange(len(batch["image"]), device=batch["image"].device), groups)
        sums, counts = [], []
        for idx in rows:
            for t in self.tasks:
                keep = torch.zeros(len(batch["image"]), dtype=torch.bool, device=idx.device)
                keep[idx] = True
                total, count = loss_sum(out[t.name], self.target(t, batch), self.weight_of(t, idx.device), keep)
                sums.append(total if count > 0 else out[t.name].sum() * 0.0)
                counts.append(count.detach())
        counts = torch.stack(counts).double()
        if ctx.world_size > 1:
            counts = ctx.all_reduce(counts, "sum") / ctx.world_size
        losses = torch.stack(sums) / counts.clamp_min(1e-12).to(sums[0].dtype)
        return losses.view(groups, len(self.tasks))

    def preference_losses(self, out, batch, prefs: torch.Tensor, ctx) -> dict[str, torch.Tensor]:
        """L_task(r) = Σ_i r_i w_i L_i (averaged over the step's preference groups), one term per task."""
        losses = self.task_losses(out, batch, ctx, len(prefs))
        weighted = (prefs.to(losses.dtype) * torch.tensor(self.scales, dtype=losses.dtype, device=losses.device)
                    * losses).mean(0)
        return {t.name: weighted[i] for i, t in enumerate(self.tasks)}

    # ------------------------------------------------------------------------- inference
    def set_control(self, preference, budget: float) -> None:
        """Evaluate at ``(preference, budget)`` from now on (what ``algorithm.preference/budget`` set)."""
        self.control = (list(preference), float(budget))
        self._eval_cache = None

    def current_control(self) -> tuple[list[float], float]:
        pref, budget = self.control or (self.config.preference, self.config.budget)
        n = len(self.tasks)
        if pref is None:
            pref = [1.0 / n] * n
        if len(pref) != n or sum(pref) <= 0:
            raise ValueError(f"algorithm.preference={list(pref)}: needs {n} non-negative numbers with a positive "
                             f"sum, one per task ({', '.join(t.name for t in self.tasks)})")
        return [float(p) / sum(pref) for p in pref], float(budget)

    def eval_mode(self, net: DymuNet, phase: str) -> str:
        mode = self.config.eval_tree
        if mode == "derived" and not hasattr(net, "edge_hyper"):
            raise ValueError("algorithm.eval_tree=derived: this checkpoint has no edge hypernetwork yet "
                             "(it is added at the 'edge' phase); use anchor or shared")
        if mode != "auto":
            return mode
        if phase == "pretrain" or self.config.variant in ("hard_sharing", "phn_bn"):
            return "shared"
        return "derived" if hasattr(net, "edge_hyper") else "anchor"

    def tree_for(self, net: DymuNet, phase: str, pref: list[float], budget: float):
        """(tree, BatchNorm shifts or None, mode) the evaluation runs for ``(pref, budget)``."""
        mode = self.eval_mode(net, phase)
        device = next(net.parameters()).device
        r = torch.as_tensor(pref, dtype=torch.float32, device=device)
        if mode == "derived":
            tree = net.derive(r, budget)
        elif mode == "shared":
            tree = shared_tree(net.n_tasks, net.n_layers)
        else:
            tree = anchor_tree(net.n_tasks, net.n_layers)
        deltas = None
        if self.config.modulate and hasattr(net, "weight_hyper"):
            with torch.no_grad():
                deltas = net.weight_hyper(r, budget)
        return tree, deltas, mode

    def report(self, model, ctx, out_dir) -> list:
        """``medley report``: the accuracy–FLOPs trade-off over 20 preferences r ~ Dir(1) at c = 0 and c = 1
        (mean test loss over tasks against the derived tree's MFLOPs) and the trees chosen for skewed
        and uniform preferences at both budgets."""
        from pathlib import Path

        from framework.plots import xy_svg

        out_dir, saved = Path(out_dir), self.control
        names = [t.name for t in self.tasks]
        prefs = np.random.default_rng(0).dirichlet(np.ones(len(names)), size=20)
        series: dict[str, list] = {}
        try:
            for budget in (0.0, 1.0):
                for r in prefs:
                    self.set_control(r.tolist(), budget)
                    m = ctx.evaluate("test")
                    loss = float(np.mean([m[f"test/{t}/loss"] for t in names]))
                    series.setdefault(f"c={budget:g}", []).append((m["test/tree/mflops"], loss))
        finally:
            self.control, self._eval_cache = saved, None
        plot = out_dir / "dymu_accuracy_flops.svg"
        plot.write_text(xy_svg(series, "DYMU: 20 preferences at c = 0 and c = 1", "MFLOPs per image",
                               "mean test loss over tasks", lines=False))
        net = ctx.unwrap(model)
        lines = [f"{label.split('@')[0]}, c={t['budget']:g}: {t['nodes']} nodes, {t['flops'] / 1e6:.2f} MFLOPs\n{t['drawing']}\n"
                 for label, t in self.typical_trees(net).items()]
        if not hasattr(net, "edge_hyper"):
            lines.append("no edge hypernetwork in this checkpoint (it is added at the 'edge' phase): no trees\n")
        trees = out_dir / "dymu_trees.txt"
        trees.write_text("\n".join(lines))
        return [plot, trees]

    def typical_trees(self, net) -> dict[str, dict]:
        """The derived trees of a skewed preference per task (0.9 on it) and the uniform one, at c = 0 and
        c = 1: ``{"skewed seg@c=0": {pref, budget, parents, nodes, params, flops, drawing}}``; empty
        before the edge hypernetwork exists."""
        if not hasattr(net, "edge_hyper"):
            return {}
        names, n = [t.name for t in self.tasks], len(self.tasks)
        special = {f"skewed {t}": [0.9 if i == k else 0.1 / (n - 1) for i in range(n)] for k, t in enumerate(names)}
        special["uniform"] = [1.0 / n] * n
        device, out = next(net.parameters()).device, {}
        with torch.no_grad():
            for label, r in special.items():
                for budget in (0.0, 1.0):
                    tree = net.derive(torch.tensor(r, device=device), budget)
                    out[f"{label}@c={budget:g}"] = {"pref": r, "budget": budget, "parents": tree[0],
                                                    **self.costs(net).cost(*tree), "drawing": describe(*tree, names)}
        return out

    def costs(self, net: AnchorNet):
        if self._costs is None:
            self._costs = cost_table(net, self.image_shape)
        return self._costs

    def eval_net(self, net: DymuNet, ctx) -> tuple[TreeNet, dict]:
        """The standalone pruned model for the current control, derived once per evaluation point."""
        pref, budget = self.current_control()
        key = (ctx.global_step, ctx.phase, tuple(pref), budget, self.config.eval_tree, self.config.modulate)
        if self._eval_cache is not None and self._eval_cache[0] == key:
            return self._eval_cache[1], self._eval_cache[2]
        tree, deltas, mode = self.tree_for(net, ctx.phase, pref, budget)
        model = TreeNet(net, *tree, deltas).eval()
        cost = self.costs(net).cost(*tree)
        full = self.costs(net).cost(*anchor_tree(net.n_tasks, net.n_layers))
        if ctx.rank == 0:
            log.info("dymu %s tree for r=%s c=%.2f: %d of %d nodes, %.3f M params, %.2f MFLOPs (anchor %.2f)\n%s",
                     mode, [round(p, 3) for p in pref], budget, cost["nodes"], net.n_tasks * net.n_layers,
                     cost["params"] / 1e6, cost["flops"] / 1e6, full["flops"] / 1e6,
                     describe(*tree, [t.name for t in self.tasks]))
        info = {**cost, "parents": tree[0], "heads_from": tree[1], "mode": mode}
        self._eval_cache = (key, model, info)
        return model, info

    def build_metrics(self, data_info):
        tasks = getattr(self, "tasks", None) or discover_tasks(data_info, self.config.tasks)
        metrics = {}
        for t in tasks:
            metrics[f"{t.name}/loss"] = LossMean()
            metrics[t.name] = Confusion(t.classes)  # {task}/acc, {task}/miou (and f1 when binary)
        for key in ("nodes", "params", "mflops"):
            metrics[f"tree/{key}"] = Constant(float("nan"))
        pref, _ = self.current_control()
        metrics["control/uniformity"] = Uniformity(pref, self.scales or [1.0] * len(tasks))
        return metrics

    @torch.no_grad()
    def evaluate(self, model, batch, metrics, ctx):
        net, info = self.eval_net(ctx.unwrap(model), ctx)
        metrics["tree/nodes"].value = info["nodes"]
        metrics["tree/params"].value = info["params"]
        metrics["tree/mflops"].value = info["flops"] / 1e6
        out = net(batch["image"])
        rows = batch.get("mask")
        for i, t in enumerate(self.tasks):
            tgt, logits = self.target(t, batch), out[t.name]
            total, count = loss_sum(logits, tgt, self.weight_of(t, logits.device), rows)
            metrics[f"{t.name}/loss"].update(total, count)
            metrics["control/uniformity"].update(i, total, count)
            metrics[t.name].update(logits.argmax(1), tgt, rows)

    # ------------------------------------------------------------------------------ state
    def state_dict(self):
        return {"affinity": self.affinity, "scales": self.scales}

    def load_state_dict(self, state):
        self.affinity = state.get("affinity")
        self.scales = state.get("scales")
        self._eval_cache = None
