"""Damaged shards: ``on_error=raise`` names the shard, ``skip`` counts exactly and keeps the
step count; a missing, resized or changed shard is found at start-up: refused under ``raise``,
left out and counted under ``skip``."""

from __future__ import annotations

import logging
import re
import time
import warnings

import pytest

from framework.data import shards
from framework.data.module import DataModule
from tests.helpers.data import (
    ToyConfig,
    change_byte,
    ddp_epoch,
    randomize,
    sample_offsets,
    shard_path,
    truncate,
)
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
    change_byte(path)
    with pytest.raises(ValueError, match=f"{path.name} does not match the sha256"):
        _module(tmp_path)


@pytest.mark.parametrize(
    "split, damage", [("train", "missing"), ("val", "missing"), ("test", "missing"), ("val", "short")]
)
def test_a_missing_or_short_shard_of_a_split_in_use_is_refused_at_start_up(tmp_path, split, damage):
    root = _module(tmp_path).root
    path = shard_path(root, split, 5)
    if damage == "missing":
        path.unlink()
    else:
        truncate(path, path.stat().st_size - 512)
    with pytest.raises(ValueError) as err:
        _module(tmp_path)  # before any batch is read
    message = str(err.value)
    assert str(path) in message and str(root / "manifest.json") in message
    assert "medley prepare toy_data --force" in message
    assert ("is missing" if damage == "missing" else f"has {path.stat().st_size} bytes") in message


def test_start_up_stats_evaluation_shards_and_hashes_them_only_when_first_read(tmp_path, monkeypatch):
    root = _module(tmp_path).root
    path = shard_path(root, "val", 3)
    change_byte(path)  # same size: only the sha256 shows it
    hashed = []
    real = shards._sha256
    monkeypatch.setattr(shards, "_sha256", lambda p: hashed.append(p.name) or real(p))
    monkeypatch.setattr(shards, "_VERIFIED", set())
    dm = _module(tmp_path)
    assert {re.split(r"[-.]", name)[0] for name in hashed} == {"train"}  # shards and index of train only
    with pytest.raises(ValueError, match=f"{path.name} does not match the sha256"):
        next(iter(dm.eval_loader("val")))


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_skip_leaves_out_shards_changed_before_start_and_counts_them_where_read(
    tmp_path, workers, caplog
):
    root = _module(tmp_path).root
    changed, missing = shard_path(root, "train", 2), shard_path(root, "train", 5)
    change_byte(changed)
    missing.unlink()
    with caplog.at_level(logging.WARNING, logger="framework.data.module"):
        dm = _module(tmp_path, num_workers=workers, on_error="skip")
    started = " ".join(r.getMessage() for r in caplog.records)
    assert changed.name in started and missing.name in started  # named at start-up, before any step
    steps = dm.steps_in_epoch(0)
    assert steps == 512 // 16  # the manifest's step count is kept
    batches = dm.epoch_batches()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        epochs = [[int(i) for _ in range(steps) for i in next(batches)["id"]] for _ in range(2)]
    assert dm.skipped.as_dict() == {
        "samples": 2 * 128,
        "shards": 2,
        "per_shard": {changed.name: 2 * 64, missing.name: 2 * 64},
    }
    for ids in epochs:
        assert len(ids) == steps * 16
        assert not set(ids) & (set(range(128, 192)) | set(range(320, 384)))  # no sample of either shard


def test_on_error_skip_gives_every_rank_the_same_steps_and_counts_a_changed_shard_once_per_epoch(tmp_path):
    root = _module(tmp_path).root
    change_byte(shard_path(root, "train", 6))
    cfg = ToyConfig(batch_size=16, on_error="skip")
    ranks = [DataModule(cfg, tmp_path, seed=0, rank=r, world=2) for r in (0, 1)]
    steps = [dm.steps_in_epoch(0) for dm in ranks]
    assert steps[0] == steps[1] == 256 // 16
    for dm in ranks:
        batches = dm.epoch_batches()
        assert all(len(next(batches)["id"]) == 16 for _ in range(steps[0]))
    assert sum(dm.skipped.samples for dm in ranks) == 64  # read by one rank only, as when undamaged


def test_on_error_skip_still_refuses_a_split_with_no_readable_shard(tmp_path):
    root = _module(tmp_path).root
    for k in range(8):
        change_byte(shard_path(root, "train", k))
    with pytest.raises(ValueError, match="split 'train': all 8 shards .* nothing left to read"):
        _module(tmp_path, on_error="skip")


def test_uneven_and_damaged_shards_on_two_real_ranks_run_the_same_number_of_steps(tmp_path):
    counts = [100, 7, 64, 3, 90, 50, 33, 1, 45]
    out = run_workers(ddp_epoch, 2, args=(str(tmp_path), counts, 4), timeout=90)
    assert out[0]["steps"] == out[1]["steps"] > 0
    assert sum(o["skipped"] for o in out) > 0
    assert len(out[0]["ids"]) == len(out[1]["ids"]) == out[0]["steps"] * 16


def test_on_error_skip_leaves_a_changed_shard_out_of_random_access_streams_and_counts_it_once(tmp_path):
    aux = {"meta": {"split": "val", "batch_size": 20}}
    root = _module(tmp_path, aux=aux).root
    changed = shard_path(root, "val", 4)  # ids 100..124
    change_byte(changed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = _module(tmp_path, aux=aux, on_error="skip")
    assert [str(w.message).count(changed.name) for w in caught] == [1]
    meta = dm.aux_iterators()["meta"]
    ids = {int(i) for _ in range(50) for i in next(meta)["id"]}
    assert not ids & set(range(100, 125))  # never drawn
    assert {i // 25 for i in ids} == {0, 1, 2, 3, 5, 6, 7}  # every other shard still is
    assert dm.skipped.as_dict() == {"samples": 25, "shards": 1, "per_shard": {changed.name: 25}}
