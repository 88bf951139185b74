"""``ctx``: everything an algorithm may touch of the engine during a step."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch


class NonFiniteLoss(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss; the message names the loss term."""


class StepContext:
    def __init__(self, trainer: Any):
        self._t = trainer
        self.config = trainer.cfg
        self.global_step = 0  # optimizer steps completed so far
        self.phase = ""  # name of the current phase
        self.phase_index = 0
        self.phase_spec: Any = None  # the current framework.Phase (length, data, trainable, optim, eval_sets)
        self.phase_start = 0  # global step at which the current phase began
        self.phase_steps = 0  # optimizer steps of the current phase
        self.micro = 0  # micro-batch index within the current step (accumulation)
        self.bad_step = False  # set when this step saw a non-finite loss on any rank
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        self._logs: dict[str, tuple[list, str]] = {}  # name -> (values or 0-d tensors, reduce)

    # --- topology ---------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._t.strategy.rank

    @property
    def world_size(self) -> int:
        return self._t.strategy.world_size

    @property
    def device(self) -> torch.device:
        return self._t.strategy.device

    @property
    def run_dir(self):
        """The run directory (same path on every rank; rank 0 writes non-sharded files)."""
        return self._t.run_dir

    def unwrap(self, model):
        """The plain module behind the strategy's wrapper (e.g. for ``torch.func.functional_call``)."""
        return self._t.strategy.unwrap(model)

    @property
    def phase_step(self) -> int:
        """Optimizer steps completed in the current phase."""
        return self.global_step - self.phase_start

    def to_device(self, batch: Any) -> Any:
        """Move a batch (tensors in dicts/lists, e.g. one from ``ctx.aux``) to this rank's device."""
        from framework.trainer import to_device

        return to_device(batch, self.device)

    def autocast(self):
        """The autocast context of ``trainer.precision`` (the one the trainer wraps steps in)."""
        return self._t.autocast()

    def batches(self, split: str) -> Iterator[dict]:
        """Every sample of ``split`` exactly once across ranks, in order, on this rank's device; padding
        rows have ``mask=False`` (so ranks run the same number of batches). For passes over a split
        inside a phase hook, e.g. statistics reduced with ``ctx.all_reduce``."""
        for batch in self._t.data.eval_loader(split):
            yield self.to_device(batch)

    def evaluate(self, name: str) -> dict[str, float]:
        """Evaluate the current model on an evaluation set or split now (every rank must call it);
        returns ``{name/task/metric: value}``."""
        return self._t.evaluate(name)

    @property
    def data_info(self) -> Any:
        return self._t.data.info

    @property
    def accumulating(self) -> bool:
        """True on micro-batches that do not end an optimizer step."""
        return self.micro < self._t.accum - 1

    # --- optimisation ---------------------------------------------------------------
    def all_finite(self, losses: dict[str, torch.Tensor] | torch.Tensor) -> tuple[bool, str]:
        """One flag all-reduced across ranks, so every rank skips the same step."""
        ok, name, _ = self.finite_values(losses)
        return ok, name

    def finite_values(self, losses: dict[str, torch.Tensor] | torch.Tensor) -> tuple[bool, str, list[float]]:
        """``all_finite`` and the losses' values in one device-to-host copy: every loss is stacked
        with the rank-reduced flag, so a step waits for the device once, not once per loss."""
        items = list(losses.items()) if isinstance(losses, dict) else [("loss", losses)]
        if self.device.type == "cpu" and self.world_size == 1:  # nothing to wait for: read each value
            values = [float(v.detach()) for _, v in items]
            bad_name = next((k for (k, _), v in zip(items, values) if not math.isfinite(v)), "")
            return not bad_name, bad_name, values
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        stacked = torch.stack([v.detach().reshape(()).to(self.device, dtype) for _, v in items]) if items else \
            torch.zeros(0, dtype=dtype, device=self.device)
        finite = torch.isfinite(stacked)
        flag = self.all_reduce((~finite.all()).to(dtype).reshape(1), "max")
        host = torch.cat([flag, stacked]).tolist()
        values = host[1:]
        bad_name = next((k for (k, _), v in zip(items, values) if not math.isfinite(v)), "")
        return host[0] == 0.0, bad_name or ("a loss on another rank" if host[0] else ""), values

    def backward(self, loss: torch.Tensor) -> None:
        """Backward through the strategy. In automatic mode the loss is divided by the
        accumulation count; under ``manual_optimization`` the algorithm scales it itself."""
        if self._t.manual:
            ok, name = self.all_finite(loss)
            if not ok:
                self._t.mark_bad(name)
                return
        if self.bad_step:
            return
        if not self._t.manual and self._t.accum > 1:
            loss = loss / self._t.accum
        self._t.strategy.backward(loss, self._t.model)

    def step(self, name: str = "main") -> None:
        """Clip, step optimizer ``name`` and its scheduler, zero its gradients.
        On a bad step (non-finite loss somewhere) parameters and optimizer state stay unchanged."""
        opt = self.optimizers[name]
        strategy, model = self._t.strategy, self._t.model
        if not self.bad_step:
            strategy.sync_owned_grads(self._t.algorithm.owned_module())
            if self._t.grad_clip > 0:
                norm = strategy.clip_grad_norm(model, self._t.grad_clip)
                self.log("grad_norm", norm)
            strategy.optimizer_step(opt, model)
            if self.schedulers.get(name) is not None:
                self.schedulers[name].step()
        strategy.zero_grad(opt, model)

    def no_sync(self):
        return self._t.strategy.no_sync(self._t.model, self.accumulating)

    # --- communication and logging ---------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``tensor`` across ranks in place and return it; ``op``: sum | mean | max | min."""
        return self._t.strategy.all_reduce(tensor, op)

    @property
    def rank_sum(self):
        """``None`` in one process, else a function summing a tensor over ranks: the ``reduce``
        argument of ``framework.lookahead`` (``inner_step(..., reduce=ctx.rank_sum, world_size=ctx.world_size)``)."""
        if self.world_size == 1:
            return None
        return lambda t: self.all_reduce(t, "sum")

    def log(self, name: str, value: float | torch.Tensor, reduce: str = "mean") -> None:
        """Log a non-loss value; averaged over the log window, then reduced across ranks
        with ``reduce`` (mean | sum | max | min) when the trainer writes a log line. A tensor is
        kept on its device (a copy) until then: logging does not wait for the device."""
        value = value.detach().to(torch.float64 if value.device.type != "mps" else torch.float32, copy=True).reshape(()) \
            if isinstance(value, torch.Tensor) else float(value)
        entry = self._logs.get(name)
        if entry is None:
            self._logs[name] = entry = ([], reduce)
        entry[0].append(value)

    def pop_logs(self) -> dict[str, tuple[float, str]]:
        """Window means of the logged values (non-finite ones dropped), read from the device in one copy."""
        tensors = [v for values, _ in self._logs.values() for v in values if isinstance(v, torch.Tensor)]
        host = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
        out = {}
        for name, (values, reduce) in self._logs.items():
            total, count = 0.0, 0
            for v in values:
                v = next(host) if isinstance(v, torch.Tensor) else v
                if math.isfinite(v):
                    total, count = total + v, count + 1
            if count:
                out[name] = (total / count, reduce)
        self._logs = {}
        return out

    def aux(self, name: str) -> Iterator[dict]:
        """A named auxiliary stream (e.g. a balanced meta set) declared by the data config; its
        batches arrive on this rank's device, like training batches."""
        try:
            stream = self._t.aux_iterators[name]
        except KeyError:
            raise KeyError(f"no auxiliary loader '{name}' (have: {sorted(self._t.aux_iterators)})") from None
        return _OnDevice(stream, self)


class _OnDevice:
    """An iterator whose batches are moved to the device; the stream keeps its own position."""

    def __init__(self, stream: Iterator[dict], ctx: StepContext):
        self.stream, self.ctx = stream, ctx

    def __iter__(self) -> _OnDevice:
        return self

    def __next__(self) -> dict:
        return self.ctx.to_device(next(self.stream))
