"""The plugin API: what a method implements. Everything else belongs to the engine.

The module imports no torch at import time so a plugin's ``__init__`` can register itself
cheaply; the methods themselves use torch freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from framework.context import StepContext
    from framework.data.info import DataInfo


@dataclass(frozen=True)
class Capabilities:
    """What an algorithm composes with; checked before any process group starts."""

    strategies: tuple[str, ...] = ("single", "ddp", "deepspeed")
    precisions: tuple[str, ...] = ("fp32", "bf16")
    accumulation: bool = True
    find_unused_parameters: bool = False
    manual_optimization: bool = False  # the algorithm calls ctx.backward / ctx.step itself


class Algorithm:
    """Base class of every method. ``self.config`` is the plugin's typed config dataclass."""

    capabilities = Capabilities()

    def __init__(self, config: Any, full_config: Any = None):
        self.config = config
        self.full_config = full_config  # the whole resolved run config (read-only)

    # --- required ---------------------------------------------------------------------
    def build_model(self, data_info: DataInfo) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def training_step(self, model: nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Return named scalar losses; the default ``backward`` sums them."""
        raise NotImplementedError(f"{type(self).__name__}.training_step")

    # --- optional ---------------------------------------------------------------------
    def owned_module(self) -> nn.Module | None:
        """Learnable parameters the algorithm owns (e.g. loss weights): optimized, synced, checkpointed."""
        return None

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> None:
        ctx.backward(sum(losses.values()))

    def configure_optimizers(self, model: nn.Module, ctx: StepContext) -> dict[str, tuple[Any, Any]]:
        """Named ``(optimizer, scheduler_or_None)`` pairs. Default: one from ``cfg.optim``."""
        from framework.optim import default_optimizer

        return {"main": default_optimizer(model, self.owned_module(), ctx.config)}

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        """Called after every optimizer step (e.g. an EMA teacher update)."""

    def phases(self) -> list[str]:
        """Named training phases (stages, experiences); ``trainer.max_steps`` is split evenly."""
        return ["train"]

    def on_phase_start(self, phase: str, model: nn.Module, ctx: StepContext) -> None: ...

    def on_phase_end(self, phase: str, model: nn.Module, ctx: StepContext) -> None: ...

    def build_metrics(self, data_info: DataInfo) -> dict[str, Any]:
        """Metric objects keyed ``{task}/{metric}``; default: accuracy per task."""
        from framework.metrics import Accuracy

        return {f"{task}/acc": Accuracy() for task in data_info.tasks}

    def evaluate(self, model: nn.Module, batch: dict, metrics: dict[str, Any], ctx: StepContext) -> None:
        """Update ``metrics`` from one evaluation batch. ``batch['mask']`` marks real (non-padding) rows."""
        outputs = model(batch["image"])
        for task, logits in outputs.items():
            key = f"{task}/acc"
            if key in metrics:
                metrics[key].update(logits.argmax(-1), batch["labels"][task], batch.get("mask"))

    def state_dict(self) -> dict[str, Any]:
        module = self.owned_module()
        return {"owned": module.state_dict()} if module is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        module = self.owned_module()
        if module is not None and "owned" in state:
            module.load_state_dict(state["owned"])
