"""The data features through the real trainer: a mixed multi-source run resumes bit for bit."""

from __future__ import annotations

import pytest
import torch

from framework.hooks import Hook
from framework.run import train
from tests.test_trainer import Recorder


def test_multi_source_run_with_two_workers_resumes_exactly(compose, tmp_path):
    from framework.data.sources import SourceUnavailable, load_fashion

    try:
        load_fashion()  # multi_source's garment task
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    base = ["data=multi_source", "data.num_workers=2", "trainer.max_steps=8", "data.limit=256"]
    full = Recorder()
    summary = train(compose(*base, f"paths.run_dir={tmp_path / 'full'}"), hooks=[full])
    assert {"val/digit/acc", "val/garment/acc", "val/animal/acc", "val/noisy_digit/acc"} <= set(
        summary["final_metrics"]
    )

    class StopAt(Hook):
        def after_checkpoint(self, trainer, path):
            if trainer.ctx.global_step == 3:
                raise KeyboardInterrupt

    first = Recorder()
    with pytest.raises(KeyboardInterrupt):
        train(
            compose(*base, "trainer.ckpt_every=3", f"paths.run_dir={tmp_path / 'split'}"),
            hooks=[first, StopAt()],
        )
    second = Recorder()
    train(compose(*base, f"paths.run_dir={tmp_path / 'split'}", "resume=auto"), hooks=[second])
    assert first.losses + second.losses == full.losses
    assert torch.equal(second.params[-1], full.params[-1])
