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
    """What an algorithm composes with (``from framework import Capabilities``); checked before
    any process group or run directory exists.

    ``strategies``: where it may run. The effective set is narrower than declared when the
    algorithm does something a strategy cannot: see ``supported_strategies``.
    ``precisions``: ``trainer.precision`` values. ``accumulation``: ``accumulate_grad_batches > 1``
    allowed. ``find_unused_parameters``: passed to DDP (parameters a step may not use).
    ``manual_optimization``: the algorithm calls ``ctx.backward`` / ``ctx.step`` itself.
    """

    strategies: tuple[str, ...] = ("single", "ddp", "deepspeed")
    precisions: tuple[str, ...] = ("fp32", "bf16")
    accumulation: bool = True
    find_unused_parameters: bool = False
    manual_optimization: bool = False  # the algorithm calls ctx.backward / ctx.step itself


def supported_strategies(algo_cls: type, algorithm: Any = None) -> dict[str, str]:
    """Declared strategies minus those the algorithm's behaviour rules out → ``{strategy: why_not}``
    for the excluded ones (empty reasons are never returned). Decided from the class (and, when
    given, an instance's declared phases) before anything is built, so a refusal comes first.

    DeepSpeed owns the model's parameters and one optimizer for the engine's whole life: it cannot
    shard parameters outside the model (``owned_module`` overridden) nor re-initialise at a phase
    boundary (more than one phase)."""
    out: dict[str, str] = {}
    if "deepspeed" in algo_cls.capabilities.strategies:
        if algo_cls.owned_module is not Algorithm.owned_module:
            out["deepspeed"] = ("it owns parameters outside the model (owned_module), which DeepSpeed's engine "
                                "cannot shard or step")
        elif algorithm is not None and len(algorithm.phases()) > 1:
            out["deepspeed"] = ("it trains in several phases; DeepSpeed's engine keeps one model and one "
                                "optimizer for its whole life, so phases cannot rebuild them")
    return out


class Algorithm:
    """Base class of every method. ``self.config`` is the plugin's typed config dataclass.

    Call order: ``phases()`` (from the config alone, before anything is built) →
    ``build_model(data_info)`` → per phase: ``configure_model`` → ``configure_optimizers`` →
    ``on_phase_start`` → steps (``training_step`` / ``backward`` / ``after_step``) →
    ``on_phase_end`` → the phase's evaluation sets.
    """

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
        """Learnable parameters outside the model that the algorithm owns (e.g. loss weights).

        Called after ``build_model`` (create the module there) and whenever the trainer needs it:
        return the same module each time, or ``None``. The trainer moves it to the device, the
        default optimizer trains it with the model (``optim.weight_decay`` applies to it too),
        its gradients are averaged across ranks before each step, and it is checkpointed under
        ``state["algorithm"]["owned"]`` (loaded by ``resume_weights_only`` too). Overriding it
        rules out DeepSpeed (see ``supported_strategies``)."""
        return None

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> None:
        ctx.backward(sum(losses.values()))

    def configure_optimizers(self, model: nn.Module, ctx: StepContext) -> dict[str, tuple[Any, Any]]:
        """Named ``(optimizer, scheduler_or_None)`` pairs, built anew at every phase start (``ctx.phase``,
        ``ctx.phase_steps``). Default: one from ``optim.*`` with the phase's ``optim`` overrides, over the
        parameters that train in this phase, its schedule spanning the phase."""
        from framework.optim import default_optimizer

        return {"main": default_optimizer(model, self.owned_module(), ctx.config, ctx.phase_steps,
                                          ctx.phase_spec.optim if ctx.phase_spec else None)}

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        """Called after every optimizer step (e.g. an EMA teacher update)."""

    def phases(self) -> list[Any]:
        """Training phases (stages, experiences): ``framework.Phase`` objects, or plain names that
        share ``trainer.max_steps`` evenly. Decided from ``self.config``/``self.full_config`` alone."""
        return ["train"]

    def configure_model(self, phase: str, model: nn.Module, ctx: StepContext) -> nn.Module:
        """Return the model to train in ``phase``: the same one, or grown (new heads, hypernetworks,
        a frozen teacher copy as a submodule). Runs at every phase start *and*, on resume, for every
        phase up to the resumed one before weights load, so the structure must depend only on the
        phase sequence; the weights of what it adds come from the checkpoint. New modules are
        initialised from a per-phase seed, identically on every rank."""
        return model

    def on_phase_start(self, phase: str, model: nn.Module, ctx: StepContext) -> None:
        """Once per phase, after ``configure_model`` and the optimizers (e.g. a statistics pass). Not
        called again when a run resumes inside the phase: keep its results in ``state_dict``."""

    def on_phase_end(self, phase: str, model: nn.Module, ctx: StepContext) -> None:
        """Once per phase, after its last step and before its evaluation sets."""

    def eval_sets(self) -> list[Any]:
        """Extra named evaluation sets (``framework.EvalSet``) the phases may list."""
        return []

    def callbacks(self) -> list[Any]:
        """Hooks (``framework.hooks.Hook``) the algorithm contributes; they run after the config's."""
        return []

    def report(self, model: nn.Module, ctx: StepContext, out_dir: Any) -> list[Any]:
        """Figures of a trained model for ``medley report`` (the last checkpoint is loaded; ``ctx.evaluate``
        works); write them under ``out_dir`` and return their paths. Default: none."""
        return []

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
        """Algorithm state in the checkpoint; the default holds the owned module's weights."""
        module = self.owned_module()
        return {"owned": module.state_dict()} if module is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        module = self.owned_module()
        if module is not None and "owned" in state:
            module.load_state_dict(state["owned"])
