"""Damaged shards: ``on_error=raise`` names the shard, ``skip`` counts exactly and keeps the
step count; a changed shard is refused at start-up."""

from __future__ import annotations

import time
import warnings

import pytest

from framework.data.module import DataModule
from tests.helpers.data import ToyConfig, ddp_epoch, randomize, sample_offsets, shard_path, truncate
from tests.helpers.distributed import run_workers


def _module(root, **kw) -> DataModule:
    kw.setdefault("batch_size", 16)
    return DataModule(ToyConfig(**kw), root, seed=0)


def _damage(root):
    """Shard 1 cut after 40 of 64 samples, shard 4 random bytes, shard 6 deleted: 152 lost."""
    p1, p4, p6 = (shard_path(root, "train", k) for k in (1, 4, 6))
    truncate(p1, sample_offsets(p1)[40] + 300)
    randomize(p4)
    p6.unlink()
    return {p1.name: 24, p4.name: 64, p6.name: 64}


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_raise_names_the_damaged_shard(tmp_path, workers):
    dm = _module(tmp_path, num_workers=workers)
    path = shard_path(dm.root, "train", 3)
    truncate(path, sample_offsets(path)[10] + 100)
    with pytest.raises(RuntimeError, match=path.name):
        batches = dm.epoch_batches()
        for _ in range(dm.steps_in_epoch(0)):
            next(batches)


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_skip_counts_lost_samples_and_shards_exactly_and_warns_once_per_shard(
    tmp_path, workers, monkeypatch
):
    dm = _module(tmp_path, num_workers=workers, on_error="skip")
    lost = _damage(dm.root)
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"slept {s} s on a read error"))
    steps = dm.steps_in_epoch(0)
    batches = dm.epoch_batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epochs = [[int(i) for _ in range(steps) for i in next(batches)["id"]] for _ in range(2)]
    assert dm.skipped.as_dict() == {
        "samples": 2 * 152,
        "shards": 3,
        "per_shard": {k: 2 * v for k, v in lost.items()},
    }
    assert sorted(
        str(w.message).split("shard ")[1].split(":")[0] for w in caught if "on_error=skip" in str(w.message)
    ) == sorted(lost)  # one warning per shard, not per error or per epoch
    readable = set(range(512)) - set(range(64 + 40, 128)) - set(range(256, 320)) - set(range(384, 448))
    for ids in epochs:
        assert len(ids) == steps * 16  # the step count stays what the manifest promised
        assert set(ids) <= readable  # the shortfall is filled with repeats of readable samples
        assert len(readable - set(ids)) < 16 * max(workers, 1)  # at most a short last batch per worker


def test_a_shard_changed_since_prepare_is_refused_at_start_up(tmp_path):
    dm = _module(tmp_path)
    path = shard_path(dm.root, "train", 2)
    data = bytearray(path.read_bytes())
    data[2000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path.name} does not match the sha256"):
        _module(tmp_path)


def test_uneven_and_damaged_shards_on_two_real_ranks_run_the_same_number_of_steps(tmp_path):
    counts = [100, 7, 64, 3, 90, 50, 33, 1, 45]
    out = run_workers(ddp_epoch, 2, args=(str(tmp_path), counts, 4), timeout=90)
    assert out[0]["steps"] == out[1]["steps"] > 0
    assert sum(o["skipped"] for o in out) > 0
    assert len(out[0]["ids"]) == len(out[1]["ids"]) == out[0]["steps"] * 16
