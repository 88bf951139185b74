"""The training loop. ``fit()`` reads top to bottom: phases → steps → micro-batches.

Everything backend-specific goes through ``self.strategy``; everything method-specific
through ``self.algorithm``. The hook order is documented in ``framework/hooks.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from framework import checkpoint as ckpt
from framework.context import NonFiniteLoss, StepContext
from framework.evalsets import EvalMatrix, resolve as resolve_set, selection_mask
from framework.hooks import Hook, load_callbacks
from framework.phases import plan as plan_phases
from framework.runlog import RunLogger

log = logging.getLogger("medley")


class Trainer:
    def __init__(self, cfg: Any, strategy: Any, algorithm: Any, data: Any, run_dir: Path | None,
                 hooks: list[Hook] | None = None):
        self.cfg, self.strategy, self.algorithm, self.data = cfg, strategy, algorithm, data
        self.run_dir = run_dir  # same path on every rank; only rank 0 writes non-sharded files
        # the config's callbacks, then the caller's hooks, then the algorithm's (framework/hooks.py)
        self.hooks = [*load_callbacks(cfg.trainer.get("callbacks") or []), *(hooks or []), *algorithm.callbacks()]
        self.manual = algorithm.capabilities.manual_optimization
        self.accum = 1 if self.manual else cfg.trainer.accumulate_grad_batches
        # read once: a config lookup costs microseconds, several of them per step add up on small models
        self.grad_clip, self.precision = float(cfg.trainer.grad_clip), str(cfg.trainer.precision)
        self.ctx = StepContext(self)
        # named auxiliary streams (e.g. a balanced meta set) offered by the data module: ctx.aux(name)
        self.aux_iterators: dict[str, Any] = getattr(data, "aux_iterators", dict)()
        self.bad_steps = self.bad_total = 0
        self.best: float | None = None
        self.resumed_from: int | None = None  # step of the checkpoint this run continued from
        self.final_metrics: dict[str, float] = {}
        self.plan = plan_phases(algorithm.phases(), cfg.trainer.max_steps)
        if len(self.plan.phases) > 1 and not strategy.supports_phases:
            raise ValueError(f"strategy={strategy.name} cannot rebuild the model and optimizers at phase "
                             f"boundaries; algorithm {cfg.algorithm.name} has {len(self.plan.phases)} phases")
        self.phases_done = 0  # phases whose on_phase_end has run
        self.matrix = EvalMatrix()  # phase × evaluation set (eval_matrix.json)
        self.segments: list[dict] = []  # earlier training segments of a resumed run
        self._segment_start, self._t_start = 0, time.time()

        torch.manual_seed(cfg.trainer.seed)  # identical initial weights on every rank
        self.model: Any = None
        self._module = algorithm.build_model(data.info)  # the plain model; self.model is the wrapped one
        self.configure_phase(0)

    # --------------------------------------------------------------------------- phases
    def _set_phase(self, index: int) -> None:
        ctx, phase = self.ctx, self.plan.phases[index]
        ctx.phase, ctx.phase_index, ctx.phase_spec = phase.name, index, phase
        ctx.phase_start, ctx.phase_steps = self.plan.starts[index], self.plan.length(index)

    def grow(self, index: int) -> None:
        """``algorithm.configure_model`` for phase ``index``, new modules seeded per phase (rank-identical)."""
        self._set_phase(index)
        module = self.strategy.unwrap(self.model) if self.model is not None else self._module
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.trainer.seed * 7919 + index)
            self._module = self.algorithm.configure_model(self.ctx.phase, module, self.ctx)

    def configure_phase(self, index: int) -> None:
        """Structure, trainable parameters, optimizers and the strategy's wrapper for phase ``index``.
        A new wrapper syncs the model from rank 0 (DDP), so grown parameters agree everywhere."""
        self.grow(index)
        module, phase = self._module, self.plan.phases[index]
        if phase.trainable is not None:
            under = lambda name, prefix: name == prefix or name.startswith(prefix + ".")  # noqa: E731
            names = [n for n, _ in module.named_parameters()]
            unmatched = [t for t in phase.trainable if not any(under(n, t) for n in names)]
            if unmatched:
                raise ValueError(f"phase '{phase.name}': trainable prefixes {unmatched} match no parameter")
            for n, p in module.named_parameters():
                p.requires_grad_(any(under(n, t) for t in phase.trainable))
        self.model = None  # drop the old wrapper (its gradient hooks) before wrapping again
        optimizers = self.algorithm.configure_optimizers(module, self.ctx)
        self.model, opts = self.strategy.setup(module, {k: v[0] for k, v in optimizers.items()}, self.algorithm)
        owned = self.algorithm.owned_module()
        if owned is not None:
            owned.to(self.strategy.device)
        self._submodules = list(self.model.modules())  # read before every step: listing them costs more
        self.ctx.optimizers = opts
        self.ctx.schedulers = {k: v[1] for k, v in optimizers.items()}

    def rebuild_to_phase(self, index: int) -> None:
        """The model as it was in phase ``index`` (every growth up to it replayed) and that phase's
        optimizers and wrapper: what a checkpoint written in that phase loads into."""
        for i in range(1, index + 1):
            (self.configure_phase if i == index else self.grow)(i)

    # ------------------------------------------------------------------------------- fit
    def fit(self) -> dict:
        cfg, ctx, plan = self.cfg.trainer, self.ctx, self.plan
        seed_everything(cfg.seed * 1000 + self.strategy.rank)  # per-rank randomness (dropout, ...)
        state, path = self.load_resume_state()  # validated before anything of the run is written
        start = 0
        if state is not None and not self.cfg.resume_weights_only:
            start = state.get("phase_index", 0)
            self.rebuild_to_phase(start)  # a grown model exists before its weights load
        if state is not None:
            self.restore(state, path)  # restores RNG when resuming
        self.write_config()
        logger = RunLogger(self.run_dir if self.strategy.is_global_zero else None, self.cfg, plan.total,
                           ctx.global_step, resumed=self.resumed_from is not None)
        batches = self.data.epoch_batches()
        self._emit("before_fit")
        self._segment_start, self._t_start = ctx.global_step, time.time()
        window = _Window()
        every = (int(cfg.ckpt_every), int(cfg.eval_every), int(cfg.log_every))  # read once, not per step

        for index in range(start, len(plan.phases)):
            if index < self.phases_done:
                continue  # resumed from the final checkpoint
            phase = plan.phases[index]
            resumed_inside = index == start and self.resumed_from is not None
            if index > 0 and not resumed_inside:  # phase 0 was set up with the model; a resumed one by replay
                self.configure_phase(index)
            self._set_phase(index)
            getattr(self.data, "set_phase", lambda _: None)(phase.data or phase.name)  # e.g. one domain per phase
            if not resumed_inside:
                self.algorithm.on_phase_start(phase.name, self.model, ctx)
            self._emit("before_phase", phase.name)
            while ctx.global_step < plan.ends[index]:
                losses = self.train_step(batches, window)
                self._every(every[0], self.save_checkpoint)
                self._every(every[1], lambda: logger.write(ctx.global_step, self.evaluate(cfg.eval_split)))
                if ctx.global_step % every[2] == 0 or ctx.global_step == plan.total:
                    self.write_logs(logger, window, losses)
            self._emit("after_phase", phase.name)
            self.algorithm.on_phase_end(phase.name, self.model, ctx)
            self.phases_done = index + 1
            self.evaluate_phase(phase, logger)

        wall = self.training_time()
        self.save_checkpoint()  # saved before the final evaluation: a crash in eval must not lose it
        known = {*self.data.manifest["splits"], *(cfg.get("eval_sets") or {}), *(s.name for s in self.algorithm.eval_sets())}
        for name in dict.fromkeys([cfg.eval_split, "test", *self.cfg.data.get("eval_splits", [])]):
            if name in known:
                self.final_metrics.update(self.evaluate(name))
        logger.write(ctx.global_step, self.final_metrics)
        logger.close()
        summary = self.summary(wall)
        self._emit("after_fit", summary)
        return summary

    def evaluate_phase(self, phase: Any, logger: RunLogger) -> None:
        """The phase's evaluation sets → the phase × set matrix (``eval_matrix.json``) and the metrics log."""
        if not phase.eval_sets:
            return
        values = {}
        for name in phase.eval_sets:
            metrics = self.evaluate(name)
            self.matrix.add(phase.name, name, metrics)
            values.update({f"phase/{phase.name}/{k}": v for k, v in metrics.items()})
        logger.write(self.ctx.global_step, values)
        if self.run_dir is not None and self.strategy.is_global_zero:
            self.matrix.write(self.run_dir / "eval_matrix.json", [p.name for p in self.plan.phases])

    def write_config(self) -> None:
        """The resolved config, written only once the start is known to be valid (a refused resume
        leaves the old run untouched)."""
        if self.run_dir is not None and self.strategy.is_global_zero:
            from omegaconf import OmegaConf

            tmp = self.run_dir / ".config.yaml.tmp"
            tmp.write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
            os.replace(tmp, self.run_dir / "config.yaml")

    def train_step(self, batches, window: _Window) -> dict[str, float]:
        """One optimizer step: ``accum`` micro-batches, a finite check, then the step. The device is
        waited for once per micro-batch (the finite flag and the loss values in one copy)."""
        ctx, alg = self.ctx, self.algorithm
        if not all(m.training for m in self._submodules):  # model.train() only after an evaluation
            self.model.train()
        self._emit("before_step", ctx.global_step)
        ctx.bad_step, step_losses = False, {}
        t0 = time.time()
        for ctx.micro in range(self.accum):
            batch = next(batches)
            window.samples += count_samples(batch)  # on the host, before the copy: no device sync
            batch = to_device(batch, self.strategy.device)
            # forward and backward of a micro-batch that does not end the step skip gradient sync
            with contextlib.nullcontext() if self.manual else ctx.no_sync():
                with self.autocast():
                    losses = alg.training_step(self.model, batch, ctx)
                if not self.manual:
                    ok, name, values = ctx.finite_values(losses)
                    if not ok:
                        self.mark_bad(name)
                    self._emit("before_backward", ctx.micro)
                    alg.backward(losses, ctx)  # skips itself on a bad step
                    self._emit("after_backward", ctx.micro)
            if self.manual:
                values = _host_values(losses)
            for k, v in zip(losses, values):
                step_losses[k] = step_losses.get(k, 0.0) + v / self.accum
        if not self.manual:
            if not ctx.bad_step:
                self._emit("before_optimizer_step")
            for name in ctx.optimizers:
                ctx.step(name)  # on a bad step: only zero_grad
            if not ctx.bad_step:
                self._emit("after_optimizer_step")
        if ctx.bad_step:
            self.bad_total += 1
            ctx.log("skipped_steps", self.bad_total, reduce="max")
        else:
            self.bad_steps = 0
            window.add(step_losses)
        ctx.global_step += 1
        alg.after_step(self.model, ctx)
        window.time += time.time() - t0
        self._emit("after_step", ctx.global_step, step_losses)
        return step_losses

    def mark_bad(self, loss_name: str) -> None:
        """A non-finite loss on some rank: this step is skipped everywhere."""
        if not self.ctx.bad_step:
            self.bad_steps += 1
            log.warning("step %d: non-finite loss '%s'; skipping the step", self.ctx.global_step, loss_name)
        self.ctx.bad_step = True
        for opt in self.ctx.optimizers.values():
            self.strategy.zero_grad(opt, self.model)
        if self.bad_steps >= self.cfg.trainer.max_bad_steps:
            raise NonFiniteLoss(
                f"loss '{loss_name}' was NaN/inf for {self.bad_steps} consecutive steps "
                f"(trainer.max_bad_steps={self.cfg.trainer.max_bad_steps}); stopping at step {self.ctx.global_step}"
            )

    # ---------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, name: str) -> dict[str, float]:
        """Metrics of evaluation set or split ``name``, as ``{name/task/metric: value}``. Every rank
        first takes rank 0's buffers (BatchNorm statistics), so every rank evaluates the weights the
        checkpoint holds."""
        eset = resolve_set(name, self.algorithm.eval_sets(), self.cfg.trainer.get("eval_sets"),
                           list(self.data.manifest["splits"]))
        self._emit("before_eval", name)
        self.strategy.sync_buffers(self.model)
        model = self.strategy.unwrap(self.model)
        was_training = model.training
        model.eval()
        metrics = {k: m.to(self.strategy.device) for k, m in self.algorithm.build_metrics(self.data.info).items()}
        with self.autocast():
            for batch in self.data.eval_loader(eset.split):
                batch = to_device(batch, self.strategy.device)
                if eset.select:
                    batch["mask"] = selection_mask(batch, eset.select)
                self.algorithm.evaluate(model, batch, metrics, self.ctx)
        out = {}
        for key, metric in metrics.items():
            metric.reduce(self.strategy)
            value = metric.compute()
            if isinstance(value, dict):
                out.update({f"{name}/{key}/{k}": float(v) for k, v in value.items()})
            else:
                out[f"{name}/{key}"] = float(value)
        model.train(was_training)
        if self.strategy.is_global_zero:
            log.info("step %d %s: %s", self.ctx.global_step, name, "  ".join(f"{k}={v:.4f}" for k, v in out.items()))
        self._track_best(out)
        self._emit("after_eval", name, out)
        return out

    # ---------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """The trainer's part of a checkpoint: data position and RNG of every rank included.
        The strategy adds the model and optimizer state in its own format."""
        ctx = self.ctx
        return {
            "step": ctx.global_step,
            "phase_index": ctx.phase_index,
            "phases_done": self.phases_done,
            "schedulers": {k: s.state_dict() for k, s in ctx.schedulers.items() if s is not None},
            "algorithm": self.algorithm.state_dict(),
            "data": self.strategy.all_gather_object(self.data.state_dict()),
            "rng": self.strategy.all_gather_object(ckpt.rng_state()),
            "bad_total": self.bad_total,
            "best": self.best,
            "world_size": self.strategy.world_size,
            "eval_matrix": self.matrix.state_dict(),
            "segments": self.segments + [self.current_segment()],
        }

    def save_checkpoint(self) -> Path | None:
        """Every rank takes part (gathers, sharded writes); rank 0 commits the visible file last."""
        step = self.ctx.global_step
        self._emit("before_checkpoint", step)
        self.strategy.sync_buffers(self.model)  # the checkpoint holds rank 0's buffers: so does every rank
        path = self.run_dir / "checkpoints" / f"step-{step:08d}.pt" if self.run_dir else None
        state = self.state()
        if path is not None:
            self.strategy.save_checkpoint(path, self.model, self.ctx.optimizers, state)
            self.strategy.barrier()
            if self.strategy.is_global_zero:
                ckpt.prune(path.parent, self.cfg.trainer.keep_last)
        self._emit("after_checkpoint", path)
        return path

    def load_resume_state(self) -> tuple[dict | None, Path | None]:
        """The checkpoint ``resume`` names, checked against this run before anything is changed."""
        path = ckpt.resolve_resume(self.cfg.resume, self.run_dir)
        if path is None:
            if self.cfg.resume == "auto" and self.strategy.is_global_zero:
                log.info("resume=auto: no checkpoint found, starting fresh")
            return None, None
        state = self.strategy.load(path)
        world = self.strategy.world_size
        if state.get("world_size", world) != world and not self.cfg.resume_weights_only:
            raise ValueError(
                f"checkpoint {path} was written at data-parallel size {state['world_size']}, "
                f"this run has {world}; pass resume_weights_only=true to load only the weights"
            )
        return state, path

    def restore(self, state: dict, path: Path) -> None:
        """Weights (and the algorithm's owned parameters); unless weights-only, also optimizer and
        scheduler state, algorithm state, data position, RNG and the step counter."""
        rank = self.strategy.rank
        self.strategy.load_weights(self.model, state["model"])
        if self.cfg.resume_weights_only:
            owned = self.algorithm.owned_module()
            if owned is not None and "owned" in state.get("algorithm", {}):
                owned.load_state_dict(state["algorithm"]["owned"])
            log.info("loaded weights from %s (step counter, optimizer and data position start fresh)", path)
            return
        self.strategy.load_optimizers(self.ctx.optimizers, state, path)
        for k, s in self.ctx.schedulers.items():
            if s is not None:
                s.load_state_dict(state["schedulers"][k])
        self.algorithm.load_state_dict(state["algorithm"])
        self.data.load_state_dict(state["data"][rank])
        self.ctx.global_step, self.bad_total, self.best = state["step"], state["bad_total"], state["best"]
        self.phases_done = state.get("phases_done", 0)
        self.matrix = EvalMatrix(state.get("eval_matrix"))
        self.segments = list(state.get("segments", []))
        self.resumed_from = state["step"]
        ckpt.set_rng_state(state["rng"][rank])
        if self.strategy.is_global_zero:
            log.info("resumed from %s at step %d (phase '%s')", path, self.ctx.global_step,
                     self.plan.phases[state.get("phase_index", 0)].name)

    def current_segment(self) -> dict:
        return {"start_step": self._segment_start, "end_step": self.ctx.global_step,
                "wall_s": round(time.time() - self._t_start, 3)}

    def training_time(self) -> float:
        """Training time of every segment of this run (earlier ones measured up to their last checkpoint)."""
        return sum(s["wall_s"] for s in self.segments) + (time.time() - self._t_start)

    # -------------------------------------------------------------------------- helpers
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.strategy.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def write_logs(self, logger: RunLogger, window: _Window, losses: dict) -> None:
        """Window means of the losses and of ``ctx.log`` values, reduced across ranks."""
        local = {f"train/{k}": (v, "mean") for k, v in window.mean().items()}
        local.update({f"train/{k}": v for k, v in self.ctx.pop_logs().items()})
        values = self.reduce_scalars(local)
        for name, opt in self.ctx.optimizers.items():
            values[f"lr/{name}"] = opt.param_groups[0]["lr"]
        rate = window.samples * self.strategy.world_size / window.time if window.time else 0.0
        values["train/samples_per_s"] = rate
        logger.write(self.ctx.global_step, values)
        logger.progress(self.ctx.global_step, values.get("train/loss"), rate)
        window.reset()

    def reduce_scalars(self, local: dict[str, tuple[float, str]]) -> dict[str, float]:
        """Reduce named scalars across ranks; ranks may hold different keys (union, NaN = absent)."""
        if self.strategy.world_size == 1:
            return {k: v for k, (v, _) in local.items()}
        keys = sorted({kh for part in self.strategy.all_gather_object(
            sorted((k, h) for k, (_, h) in local.items())) for kh in part})
        out = {}
        for how in ("mean", "sum", "max", "min"):
            names = [k for k, h in keys if h == how]
            if not names:
                continue
            vals = torch.tensor([local[k][0] if k in local else math.nan for k in names], dtype=torch.float64)
            present = (~vals.isnan()).double()
            if how in ("mean", "sum"):
                total = self.strategy.all_reduce(torch.nan_to_num(vals), "sum")
                count = self.strategy.all_reduce(present, "sum")
                vals = total / count.clamp(min=1) if how == "mean" else total
            else:
                fill = -math.inf if how == "max" else math.inf
                vals = self.strategy.all_reduce(torch.where(present.bool(), vals, fill), how)
            out.update(zip(names, vals.tolist()))
        return out

    def summary(self, wall: float) -> dict:
        c = self.cfg
        skipped = getattr(self.data, "skipped", None)  # samples lost to data.on_error=skip (this rank)
        extra = {"skipped_data": skipped.as_dict()} if skipped is not None and skipped.samples else {}
        return {**extra,
            "algorithm": c.algorithm.name,
            "dataset": c.data.name,
            "strategy": c.strategy.name,
            "world_size": self.strategy.world_size,
            "steps": self.ctx.global_step,
            "wall_s": round(wall, 3),  # training time over all segments
            "segments": self.segments + [{**self.current_segment(),
                                          "wall_s": round(wall - sum(s["wall_s"] for s in self.segments), 3)}],
            "skipped_steps": self.bad_total,
            "resumed_from": self.resumed_from,
            "final_metrics": {k: v for k, v in self.final_metrics.items() if math.isfinite(v)},
        }

    def _track_best(self, metrics: dict[str, float]) -> None:
        key = self.cfg.trainer.monitor
        if not key or key not in metrics or self.run_dir is None:
            return
        value, sign = metrics[key], (1 if self.cfg.trainer.monitor_mode == "max" else -1)
        if self.best is None or sign * value > sign * self.best:
            self.best = value
            best = self.run_dir / "checkpoints" / "best.pt"
            self.strategy.save_checkpoint(best, self.model, self.ctx.optimizers, self.state())

    def _every(self, n: int, fn) -> None:
        if n and self.ctx.global_step % n == 0 and self.ctx.global_step < self.plan.total:
            fn()

    def _emit(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)


class _Window:
    """Loss sums, samples and time since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.samples, self.time = 0, 0, 0.0

    def add(self, losses: dict[str, float]) -> None:
        terms = dict(losses) if len(losses) > 1 else {}
        terms["loss"] = sum(losses.values())
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def mean(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def _host_values(losses: dict[str, torch.Tensor]) -> list[float]:
    """The losses as floats, read from the device in one copy."""
    if not losses:
        return []
    device = next(iter(losses.values())).device
    dtype = torch.float64 if device.type != "mps" else torch.float32
    return torch.stack([v.detach().reshape(()).to(device, dtype) for v in losses.values()]).tolist()


def count_samples(batch: Any) -> int:
    """Real samples in a batch, a dict of per-domain batches, or a list of them."""
    if isinstance(batch, dict) and "image" in batch:
        return int(batch["mask"].sum()) if "mask" in batch else len(batch["image"])
    if isinstance(batch, dict):
        return sum(count_samples(v) for v in batch.values() if isinstance(v, (dict, list)))
    if isinstance(batch, list):
        return sum(count_samples(v) for v in batch)
    return 0


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    seed = seed % 2**31
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
