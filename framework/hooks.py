"""Trainer hooks. Order of one step and of one run (a test records it):

    before_fit
      before_phase(phase)                       # after configure_model/optimizers and algorithm.on_phase_start
        before_step(step)
          before_backward / after_backward      # once per micro-batch (accumulation)
          before_optimizer_step / after_optimizer_step   # skipped on a non-finite step
        after_step(step, losses)                # after algorithm.after_step
        before_checkpoint / after_checkpoint    # on ckpt_every, and *before* evaluation
        before_eval(split) / after_eval(split, metrics)  # on eval_every
      after_phase(phase)                        # before algorithm.on_phase_end
      before_eval / after_eval                  # the phase's evaluation sets (Phase.eval_sets)
      before_checkpoint / after_checkpoint      # final checkpoint, then final evaluation
      before_eval / after_eval                  # val, then test
    after_fit(summary)

Hooks come from three places and run in this order: ``trainer.callbacks`` in the config
(``"module:Class"`` strings, or ``{"class": "module:Class", **kwargs}``), the ``hooks`` passed to
``framework.run.train``, then ``algorithm.callbacks()``.
"""

from __future__ import annotations

from typing import Any


class Hook:
    def before_fit(self, trainer: Any) -> None: ...
    def after_fit(self, trainer: Any, summary: dict) -> None: ...
    def before_phase(self, trainer: Any, phase: str) -> None: ...
    def after_phase(self, trainer: Any, phase: str) -> None: ...
    def before_step(self, trainer: Any, step: int) -> None: ...
    def after_step(self, trainer: Any, step: int, losses: dict) -> None: ...
    def before_backward(self, trainer: Any, micro: int) -> None: ...
    def after_backward(self, trainer: Any, micro: int) -> None: ...
    def before_optimizer_step(self, trainer: Any) -> None: ...
    def after_optimizer_step(self, trainer: Any) -> None: ...
    def before_checkpoint(self, trainer: Any, step: int) -> None: ...
    def after_checkpoint(self, trainer: Any, path: Any) -> None: ...
    def before_eval(self, trainer: Any, split: str) -> None: ...
    def after_eval(self, trainer: Any, split: str, metrics: dict) -> None: ...


def load_callbacks(specs: Any) -> list[Hook]:
    """Instantiate ``trainer.callbacks`` entries; errors name the entry."""
    import importlib

    hooks = []
    for i, spec in enumerate(specs):
        spec = dict(spec) if not isinstance(spec, str) else {"class": spec}
        target = str(spec.pop("class", ""))
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise ValueError(f"trainer.callbacks[{i}]: '{target}' is not 'module:Class'")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"trainer.callbacks[{i}]: cannot import '{target}': {exc}") from exc
        hooks.append(cls(**spec))
    return hooks
