"""Weighted mixing of training sources, each with its own checkpointed position."""

from __future__ import annotations

import collections

import pytest

from framework.data.module import DataModule
from tests.helpers.data import ToyConfig


def _module(root, **kw) -> DataModule:
    kw.setdefault("batch_size", 16)
    return DataModule(ToyConfig(sources=3, shard_counts=[40] * 8, **kw), root, seed=0)


def _rows(batch):
    return list(zip(batch["source"].tolist(), batch["id"].tolist()))


def test_sample_mixing_follows_the_weights_and_labels_one_task_per_row(tmp_path):
    dm = _module(tmp_path, mix_weights={"s0": 1, "s1": 2, "s2": 5})
    batches = dm.epoch_batches()
    counts = collections.Counter()
    for _ in range(100):
        b = next(batches)
        assert b["image"].shape == (16, 1, 4, 4) and b["image"].dtype.is_floating_point
        for task, s in (("t0", 0), ("t1", 1), ("t2", 2)):  # labelled for its own source's task only
            assert ((b["labels"][task] >= 0) == (b["source"] == s)).all()
        counts.update(b["source"].tolist())
    share = [counts[s] / 1600 for s in range(3)]
    assert share == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.04)


def test_batch_mixing_takes_each_batch_from_one_source(tmp_path):
    dm = _module(tmp_path, mix_unit="batch")
    batches = dm.epoch_batches()
    sources = [set(next(batches)["source"].tolist()) for _ in range(30)]
    assert all(len(s) == 1 for s in sources) and set().union(*sources) == {0, 1, 2}


def test_each_source_is_read_exactly_once_per_own_epoch(tmp_path):
    dm = _module(tmp_path, mix_weights={"s0": 1, "s1": 1, "s2": 2}, mix_unit="batch")  # rows stay in order
    batches = dm.epoch_batches()
    rows = [r for _ in range(60) for r in _rows(next(batches))]  # ~480 rows of s2: more than its 320
    per_source = {s: [i for src, i in rows if src == s] for s in range(3)}
    for ids in per_source.values():
        first_epoch = ids[:320]
        assert len(set(first_epoch)) == len(first_epoch)  # no repeat before the source's epoch ends
    assert sorted(per_source[2][:320]) == list(range(640, 960))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("unit", ["sample", "batch"])
def test_resumed_mixture_continues_every_source_where_it_stopped(tmp_path, workers, unit):
    kw = {"num_workers": workers, "mix_unit": unit, "mix_weights": {"s0": 3, "s1": 1, "s2": 1}}
    full = [_rows(b) for _, b in zip(range(50), _module(tmp_path, **kw).epoch_batches())]
    for cut in (1, 13, 31):
        first = _module(tmp_path, **kw)
        head = [_rows(b) for _, b in zip(range(cut), first.epoch_batches())]
        second = _module(tmp_path, **kw)
        second.load_state_dict(first.state_dict())
        tail = [_rows(b) for _, b in zip(range(50 - cut), second.epoch_batches())]
        assert head + tail == full, f"cut {cut}"


def test_phase_sources_restrict_the_mixture_and_unknown_sources_fail(tmp_path):
    dm = _module(tmp_path, phase_sources={"warmup": ["s1"], "main": ["s0", "s2"]})
    batches = dm.epoch_batches()
    dm.set_phase("warmup")
    assert {s for _ in range(5) for s in next(batches)["source"].tolist()} == {1}
    dm.set_phase("main")
    assert {s for _ in range(20) for s in next(batches)["source"].tolist()} == {0, 2}
    with pytest.raises(ValueError, match="unknown source"):
        _module(tmp_path, mix_weights={"s9": 1})
    with pytest.raises(ValueError, match="holdout_domain"):
        _module(tmp_path, holdout_domain="nope")
    assert _module(tmp_path, holdout_domain="s1").sources == {"s0": "train.s0", "s2": "train.s2"}
