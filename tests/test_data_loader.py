"""The training and evaluation streams: exactly once, equal steps per rank, exact resume."""

from __future__ import annotations

import collections
import logging

import pytest

from framework.data.module import DataModule, prepared_dir
from tests.helpers.data import ToyConfig


def _module(root, rank=0, world=1, seed=0, **kw) -> DataModule:
    kw.setdefault("batch_size", 16)
    return DataModule(ToyConfig(**kw), root, seed=seed, rank=rank, world=world)


def _ids(batches, n):
    return [int(i) for _ in range(n) for i in next(batches)["id"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch_across_two_ranks(tmp_path, workers):
    ranks = [_module(tmp_path, r, 2, num_workers=workers) for r in range(2)]  # 8 shards x 64, batch 16
    steps = [dm.steps_in_epoch(0) for dm in ranks]
    assert steps == [16, 16]
    ids = [i for dm in ranks for i in _ids(dm.epoch_batches(), 16)]
    assert collections.Counter(ids) == collections.Counter(range(512))


def test_uneven_shards_give_every_rank_the_same_step_count_and_log_the_dropped_tail(tmp_path, caplog):
    counts = [100, 7, 64, 3, 90, 50, 33, 1, 45]
    with caplog.at_level(logging.INFO, logger="framework.data.cursor"):
        ranks = [_module(tmp_path, r, 2, shard_counts=counts, num_workers=2) for r in range(2)]
        per_rank = [dm.steps_in_epoch(e) for dm in ranks for e in range(3)]
    assert per_rank[:3] == per_rank[3:]  # same count on both ranks, every epoch
    assert "samples dropped this epoch" in caplog.text
    for epoch in range(2):  # every rank really delivers that many distinct batches, no repeats
        seen = []
        for r in range(2):
            dm = _module(tmp_path, r, 2, shard_counts=counts, num_workers=2)
            batches = dm.epoch_batches()
            for _ in range(epoch * dm.steps_in_epoch(0)):
                next(batches)
            seen += _ids(batches, dm.steps_in_epoch(epoch))
        assert len(seen) == len(set(seen)) == per_rank[epoch] * 16 * 2


def test_too_few_shards_for_ranks_times_workers_fails_naming_all_three_numbers(tmp_path):
    with pytest.raises(ValueError, match="3 shards for 2 ranks x 2 workers: need at least 4"):
        _module(tmp_path, 0, 2, shard_counts=[40, 40, 40], num_workers=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_epochs_equal_the_uninterrupted_stream(tmp_path, workers):
    kw = {"shard_counts": [70, 30, 64, 50, 41, 64, 80, 23], "num_workers": workers, "shuffle_buffer": 50}
    dm = _module(tmp_path, **kw)
    n = dm.steps_in_epoch(0)
    full = _ids(dm.epoch_batches(), 2 * n)
    for cut in (1, n // 2, n - 1, n, n + 2):
        first = _module(tmp_path, **kw)
        batches = first.epoch_batches()
        head = _ids(batches, cut)
        state = first.state_dict()
        del batches
        second = _module(tmp_path, **kw)
        second.load_state_dict(state)
        tail = _ids(second.epoch_batches(), 2 * n - cut)
        assert collections.Counter(head + tail) == collections.Counter(full), f"cut {cut}"
        assert head + tail == full, f"cut {cut}: same order too"


def test_resume_with_a_different_worker_count_is_refused(tmp_path):
    dm = _module(tmp_path, num_workers=2)
    next(dm.epoch_batches())
    other = _module(tmp_path, num_workers=0)
    with pytest.raises(ValueError, match="saved with 2 loader workers per rank, this run has 1"):
        other.load_state_dict(dm.state_dict())


def test_global_order_gives_batch_k_the_same_ids_at_any_world_size(tmp_path):
    one = _ids(_module(tmp_path, order="global", batch_size=16).epoch_batches(), 4)
    two = [
        _ids(_module(tmp_path, r, 2, order="global", batch_size=8, num_workers=2).epoch_batches(), 4)
        for r in range(2)
    ]
    for k in range(4):
        assert sorted(one[16 * k : 16 * (k + 1)]) == sorted(
            two[0][8 * k : 8 * (k + 1)] + two[1][8 * k : 8 * (k + 1)]
        )


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_reads_every_sample_exactly_once_with_padding_masked(tmp_path, world):
    counts = [25, 25, 25, 25, 25, 25, 25, 26]  # 201 samples: uneven across ranks
    per_rank = []
    for r in range(world):
        dm = _module(tmp_path, r, world, eval_counts=counts, eval_batch_size=32)
        per_rank.append(list(dm.eval_loader("test")))
    assert len({len(b) for b in per_rank}) == 1  # every rank runs the same number of batches
    ids = [int(i) for batches in per_rank for b in batches for i, keep in zip(b["id"], b["mask"]) if keep]
    assert sorted(ids) == list(range(201))
    padded = [b for batches in per_rank for b in batches if not b["mask"].all()]
    assert all((b["labels"]["cls"][~b["mask"]] == -1).all() for b in padded)


def test_prepared_copy_is_keyed_by_construction_not_by_loader_keys(tmp_path):
    base = prepared_dir(ToyConfig(), tmp_path)
    assert (
        prepared_dir(ToyConfig(batch_size=3, num_workers=2, mix_unit="batch", verify="none"), tmp_path)
        == base
    )
    assert prepared_dir(ToyConfig(shard_counts=[1, 2]), tmp_path) != base
    assert prepared_dir(ToyConfig(limit=10), tmp_path) != base
