"""Checkpoints are atomic, and resuming continues bit-for-bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framework.hooks import Hook
from framework.run import train
from framework.strategies.base import save_atomic
from tests.test_trainer import Recorder


def test_exception_mid_save_leaves_previous_checkpoint_loadable_and_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "step-00000001.pt"
    save_atomic({"w": torch.arange(4.0)}, path)
    before = path.read_bytes()

    real_save = torch.save

    def crash_halfway(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(10)  # a partial write...
        raise OSError("disk full")  # ...then the failure

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_resume_after_half_the_steps_matches_the_uninterrupted_run(compose, tmp_path):
    n = 6
    full = Recorder()
    train(compose(f"trainer.max_steps={2 * n}", "optim.warmup_steps=3", f"paths.run_dir={tmp_path / 'full'}"),
          hooks=[full])

    first = Recorder()
    cfg_half = compose(f"trainer.max_steps={2 * n}", "optim.warmup_steps=3", f"trainer.ckpt_every={n}",
                       f"paths.run_dir={tmp_path / 'split'}")

    class StopAt(Hook):
        def after_checkpoint(self, trainer, path):
            if trainer.ctx.global_step == n:
                raise KeyboardInterrupt  # the process dies right after the step-n checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(cfg_half, hooks=[first, StopAt()])
    second = Recorder()
    train(compose(f"trainer.max_steps={2 * n}", "optim.warmup_steps=3", f"paths.run_dir={tmp_path / 'split'}",
                  "resume=auto"), hooks=[second])

    assert len(first.losses) == n and len(second.losses) == n
    assert first.losses + second.losses == full.losses  # every per-step loss ==
    assert torch.equal(second.params[-1], full.params[-1])


def test_resume_from_explicit_missing_path_is_an_error(compose, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        train(compose(f"resume={tmp_path / 'nope.pt'}"))


def test_resume_auto_without_checkpoint_starts_fresh(compose, tmp_path, caplog):
    caplog.set_level("INFO")
    summary = train(compose("resume=auto", "trainer.max_steps=2", f"paths.run_dir={tmp_path / 'fresh'}"))
    assert summary["steps"] == 2
    assert "no checkpoint found, starting fresh" in caplog.text
