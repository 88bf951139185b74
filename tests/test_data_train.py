"""The data features through the real trainer: a mixed multi-source run resumes bit for bit; a
shard changed before start is skipped under ``data.on_error=skip`` and reported in the summary."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from framework.hooks import Hook
from framework.run import train
from tests.helpers.data import change_byte, shard_path
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


def test_a_shard_changed_before_start_is_skipped_and_reported_in_the_summary_under_on_error_skip(
    compose, tmp_path
):
    from framework.config import plugin_config
    from framework.data.module import prepare, prepared_dir
    from framework.registry import DATASETS

    cfg = compose("data.on_error=skip", f"paths.run_dir={tmp_path / 'run'}")
    data_cfg = plugin_config(cfg.data, DATASETS)
    shared = prepare(data_cfg, prepared_dir(data_cfg, cfg.paths.data_root))
    own = prepared_dir(data_cfg, tmp_path / "data")
    shutil.copytree(shared, own)  # damage a private copy, not the session's prepared data
    cfg.paths.data_root = str(tmp_path / "data")
    path = shard_path(own, "train", 3)
    change_byte(path)
    shards = json.loads((own / "manifest.json").read_text())["splits"]["train"]["shards"]
    lost = next(s["count"] for s in shards if s["file"] == path.name)
    with pytest.warns(RuntimeWarning, match=path.name):  # 512 samples < the shuffle buffer: all read first
        summary = train(cfg)
    assert summary["steps"] == cfg.trainer.max_steps
    assert summary["skipped_data"] == {"samples": lost, "shards": 1, "per_shard": {path.name: lost}}
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["skipped_data"] == summary["skipped_data"]
