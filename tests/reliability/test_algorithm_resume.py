"""Every registered algorithm (and ``configs/algorithm/`` variant), interrupted after a step that
follows a checkpoint and resumed in the same process: the per-step losses are ``==`` those of an
uninterrupted run, the final parameters ``torch.equal``, and the algorithm's own state
(relation matrices, EMA teachers, margin tables, hypernetworks, owned parameters) is restored
exactly as it was saved and ends equal to the uninterrupted run's."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from framework.hooks import Hook
from framework.run import train
from tests.helpers import reliability as R
from tests.test_algorithm_smoke import CASES, case_overrides, unavailable

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(R.TIMEOUT_S)]
CHECKS = ("losses ==", "parameters torch.equal", "algorithm state round-trips and ends equal")
#: the CI subset: a plain one, one with owned state and phases, one with a hypernetwork
FAST = [c for c in ("pcgrad", "cdcl", "dymu") if c in CASES] or CASES[:3]
SELECTED = CASES if R.FULL else FAST


def same(a: Any, b: Any, where: str = "") -> str | None:
    """The first place where two nested states differ (None: identical)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            a.shape == b.shape and torch.equal(a, b)
        return None if ok else where or "."
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{where} keys {sorted(map(str, set(a) ^ set(b)))}"
        for k in a:
            d = same(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where} length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = same(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else f"{where} {a!r} vs {b!r}"


def snapshot(state: Any) -> Any:
    """A deep copy: a state_dict holds the live tensors, which later steps change in place."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(v) for v in state)
    return state


class Watch(Hook):
    """Losses per step, the algorithm state at each checkpoint and after restore, final weights."""

    def __init__(self, stop_after: int = 0):
        self.stop_after, self.losses, self.saved, self.restored, self.final = stop_after, {}, {}, None, None

    def before_fit(self, trainer) -> None:
        self.restored = snapshot(trainer.algorithm.state_dict())

    def after_step(self, trainer, step, losses) -> None:
        self.losses[step] = dict(losses)
        if step == self.stop_after:
            raise KeyboardInterrupt  # the process dies here, after the checkpoint before this step

    def after_checkpoint(self, trainer, path) -> None:
        self.saved[trainer.ctx.global_step] = snapshot(trainer.algorithm.state_dict())

    def after_fit(self, trainer, summary) -> None:
        model = trainer.strategy.unwrap(trainer.model)
        self.final = ({k: v.detach().clone() for k, v in model.state_dict().items()}, snapshot(trainer.algorithm.state_dict()))


@pytest.mark.parametrize("case", SELECTED)
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(case, data_root, tmp_path):
    reason = unavailable(case)
    if reason:
        pytest.skip(reason)
    from tests.helpers.dist_workers import compose

    base = case_overrides(case)
    steps = int(next((o.split("=")[1] for o in reversed(base) if o.startswith("trainer.max_steps=")), 4))
    steps = max(steps, 4)
    extra = [f"trainer.max_steps={steps}", "trainer.ckpt_every=2", "trainer.log_every=1", "trainer.keep_last=0"]
    full = Watch()
    train(compose(str(data_root), *base, *extra, f"paths.run_dir={tmp_path / 'full'}"), hooks=[full])
    first, second = Watch(stop_after=3), Watch()
    split = [*base, *extra, f"paths.run_dir={tmp_path / 'split'}"]
    with pytest.raises(KeyboardInterrupt):
        train(compose(str(data_root), *split), hooks=[first])
    train(compose(str(data_root), *split, "resume=auto"), hooks=[second])

    problems = []
    losses = {**{s: v for s, v in first.losses.items() if s <= 2}, **second.losses}
    if losses != full.losses:
        problems.append(f"losses differ: {losses} vs {full.losses}")
    diff = same(second.restored, first.saved.get(2), "algorithm state restored")
    if diff:
        problems.append(f"algorithm state does not round-trip at {diff}")
    diff = same(second.final[0], full.final[0], "parameters") or same(second.final[1], full.final[1], "final algorithm state")
    if diff:
        problems.append(f"differs at {diff}")
    R.record("interrupt and resume every algorithm", case, "KeyboardInterrupt after step 3 (checkpoint at 2)",
             1, 0 if problems else 1, CHECKS)
    assert not problems, "\n".join(problems)
