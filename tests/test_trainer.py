"""The training loop: event order, NaN handling, toy plugins, run outputs."""

from __future__ import annotations

import json

import pytest
import torch

import tests.helpers.toy_algorithms  # noqa: F401 - registers the toy plugins
from framework.context import NonFiniteLoss
from framework.hooks import Hook
from framework.run import train


class Recorder(Hook):
    def __init__(self):
        self.events: list[str] = []
        self.losses: list[dict] = []
        self.params: list[torch.Tensor] = []

    def __getattribute__(self, name):
        if name.startswith(("before_", "after_")):
            def record(trainer, *args):
                self.events.append(name if not args or not isinstance(args[0], (int, str)) else f"{name}:{args[0]}")
                if name == "after_step":
                    self.losses.append(args[1])
                    self.params.append(torch.cat([p.detach().flatten().clone() for p in
                                                  trainer.strategy.unwrap(trainer.model).parameters()]))
            return record
        return object.__getattribute__(self, name)


def test_event_order_of_one_epoch_with_accumulation_2(compose):
    # 512 samples / batch 32 = 16 batches = one epoch = 8 optimizer steps of 2 micro-batches
    cfg = compose("trainer.max_steps=8", "trainer.accumulate_grad_batches=2", "trainer.ckpt_every=4",
                  "trainer.eval_every=4", "trainer.eval_split=val")
    rec = Recorder()
    train(cfg, hooks=[rec])
    step = lambda s: [f"before_step:{s}", "before_backward:0", "after_backward:0", "before_backward:1",
                      "after_backward:1", "before_optimizer_step", "after_optimizer_step", f"after_step:{s + 1}"]
    expected = ["before_fit", "before_phase:train"]
    for s in range(8):
        expected += step(s)
        if s + 1 == 4:
            expected += ["before_checkpoint:4", "after_checkpoint", "before_eval:val", "after_eval:val"]
    expected += ["after_phase:train", "before_checkpoint:8", "after_checkpoint",
                 "before_eval:val", "after_eval:val", "before_eval:test", "after_eval:test", "after_fit"]
    assert rec.events == expected


def test_injected_nan_skips_the_step_with_parameters_unchanged(compose):
    cfg = compose("algorithm=toy_nan", "algorithm.nan_steps=[3]", "trainer.max_steps=6")
    rec = Recorder()
    summary = train(cfg, hooks=[rec])
    assert summary["skipped_steps"] == 1
    assert torch.equal(rec.params[2], rec.params[3])  # step index 3 was skipped
    assert not torch.equal(rec.params[3], rec.params[4])  # training continues afterwards
    assert not torch.equal(rec.params[1], rec.params[2])


def test_consecutive_nan_steps_stop_naming_the_loss_term(compose):
    cfg = compose("algorithm=toy_nan", "algorithm.nan_steps=[2,3,4]", "trainer.max_bad_steps=3")
    with pytest.raises(NonFiniteLoss, match="loss 'right' was NaN/inf for 3 consecutive steps"):
        train(cfg)


def test_manual_optimization_plugin_trains(compose):
    cfg = compose("algorithm=toy_manual", "trainer.max_steps=8")
    rec = Recorder()
    summary = train(cfg, hooks=[rec])
    assert summary["steps"] == 8
    assert not torch.equal(rec.params[0], rec.params[-1])


def test_owned_parameter_is_optimized_and_checkpointed(compose):
    cfg = compose("algorithm=toy_owned", "trainer.max_steps=8", "optim.lr=0.1")
    summary = train(cfg)
    from pathlib import Path

    ckpt = sorted((Path(summary["run_dir"]) / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(ckpt, weights_only=True)
    log_var = state["algorithm"]["owned"]["log_var"]
    assert log_var.abs().sum() > 0  # moved away from its zero init


def test_run_directory_contract(compose):
    cfg = compose("trainer.max_steps=4", "logger.tensorboard=true", "trainer.ckpt_every=2")
    summary = train(cfg)
    from pathlib import Path

    run = Path(summary["run_dir"])
    on_disk = json.loads((run / "summary.json").read_text())
    for key in ("algorithm", "dataset", "strategy", "world_size", "steps", "wall_s", "final_metrics"):
        assert key in on_disk
    assert on_disk["steps"] == 4 and on_disk["world_size"] == 1
    assert all(isinstance(v, float) for v in on_disk["final_metrics"].values())
    assert "test/left/acc" in on_disk["final_metrics"]
    assert (run / "config.yaml").exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in x for x in lines)
    assert list((run / "tb").glob("events.*"))
    assert [p.name for p in sorted((run / "checkpoints").glob("step-*.pt"))] == ["step-00000002.pt",
                                                                                 "step-00000004.pt"]


def test_bf16_autocast_and_clipping_train(compose):
    summary = train(compose("trainer.precision=bf16", "trainer.grad_clip=1.0", "trainer.max_steps=3"))
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0


def test_unsupported_strategy_fails_naming_algorithm_and_strategy(compose):
    from framework.config import ConfigError
    from framework.run import check_capabilities

    cfg = compose("algorithm=toy_manual")
    cfg.algorithm.name  # noqa: B018
    import tests.helpers.toy_algorithms as toys

    original = toys.ToyManual.capabilities
    toys.ToyManual.capabilities = type(original)(strategies=("ddp",), manual_optimization=True)
    try:
        with pytest.raises(ConfigError, match="algorithm 'toy_manual' does not support strategy 'single'"):
            check_capabilities(cfg)
    finally:
        toys.ToyManual.capabilities = original


def test_monitored_metric_keeps_the_best_checkpoint(compose):
    from pathlib import Path

    seen = []

    class Vals(Hook):
        def after_eval(self, trainer, split, metrics):
            if split == "val":
                seen.append((metrics["val/left/acc"], trainer.ctx.global_step))

    summary = train(compose("trainer.max_steps=6", "trainer.eval_every=2", "optim.lr=0.2",
                            "trainer.monitor=val/left/acc"), hooks=[Vals()])
    state = torch.load(Path(summary["run_dir"]) / "checkpoints" / "best.pt", weights_only=True)
    best_value = max(v for v, _ in seen)
    first_best_step = next(s for v, s in seen if v == best_value)
    assert len(seen) == 3
    assert state["best"] == best_value and state["step"] == first_best_step
