"""Shard files: what is written is read back exactly, and damage is detected and named."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from framework.data.shards import (
    ShardError,
    decode_sample,
    iter_raw_samples,
    load_index,
    read_manifest,
    read_sample_at,
    verify_shards,
    write_split,
)
from tests.helpers.data import randomize, sample_offsets, truncate


def _samples(n):
    for i in range(n):
        yield {
            "image": np.arange(i, i + 12, dtype=np.uint8).reshape(3, 4),
            "seg": np.full((3, 4), i % 5, np.uint8),
            "id": 100 + i,
            "labels": {"a": i % 3},
            "domain": i % 2,
            "attrs": {"light": i % 4},
        }


def test_written_samples_read_back_identically_in_order_and_by_index(tmp_path):
    entry = write_split(tmp_path, "train", _samples(50), 50, min_shards=8)
    assert len(entry["shards"]) == 8 and sum(s["count"] for s in entry["shards"]) == 50 == entry["count"]
    seq = [
        decode_sample(r) for s in entry["shards"] for r in iter_raw_samples(tmp_path / s["file"], s["count"])
    ]
    expected = list(_samples(50))
    assert [s["id"] for s in seq] == [e["id"] for e in expected]
    for got, want in zip(seq, expected):
        assert np.array_equal(got["image"], want["image"]) and np.array_equal(got["seg"], want["seg"])
        assert got["labels"] == want["labels"] and got["attrs"] == want["attrs"]
    index = load_index(tmp_path, entry)
    assert index["id"].tolist() == [e["id"] for e in expected]
    assert index["label.a"].tolist() == [i % 3 for i in range(50)] and index["attr.light"].tolist()[:5] == [
        0,
        1,
        2,
        3,
        0,
    ]
    for i in (0, 17, 49):
        with open(tmp_path / entry["shards"][index["shard"][i]]["file"], "rb") as f:
            got = decode_sample(read_sample_at(f, int(index["offset"][i]), int(index["length"][i])))
        assert got["id"] == expected[i]["id"] and np.array_equal(got["image"], expected[i]["image"])


def test_shards_are_standard_tar_files(tmp_path):
    entry = write_split(tmp_path, "val", _samples(10), 10, min_shards=2)
    with tarfile.open(tmp_path / entry["shards"][0]["file"]) as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000.image.npy", "000000000.seg.npy", "000000000.json"]


@pytest.fixture
def shard(tmp_path):
    entry = write_split(tmp_path, "train", _samples(20), 20, min_shards=1)
    return tmp_path / entry["shards"][0]["file"], entry


def test_truncated_shard_raises_naming_it_with_the_readable_count(shard):
    path, _ = shard
    offsets = sample_offsets(path)
    truncate(path, offsets[7] + 700)  # inside sample 7
    with pytest.raises(ShardError, match=path.name) as err:
        list(iter_raw_samples(path, expected=20))
    assert err.value.good == 7


def test_shard_cut_at_a_sample_boundary_is_caught_by_its_count(shard):
    path, _ = shard
    truncate(path, sample_offsets(path)[12])  # a valid, shorter tar: only the count reveals it
    with pytest.raises(ShardError, match="holds 12 samples, the manifest says 20"):
        list(iter_raw_samples(path, expected=20))


def test_random_bytes_and_missing_shards_raise_naming_them(shard, tmp_path):
    path, _ = shard
    randomize(path)
    with pytest.raises(ShardError, match=path.name):
        list(iter_raw_samples(path, expected=20))
    with pytest.raises(ShardError, match="nothing.tar"):
        list(iter_raw_samples(tmp_path / "nothing.tar", expected=3))


def test_manifest_checksum_mismatch_is_refused(tmp_path):
    from framework.data.shards import write_manifest

    entry = write_split(tmp_path, "train", _samples(16), 16, min_shards=2)
    write_manifest(tmp_path, {"name": "x", "tasks": {}, "image_shape": [1, 3, 4], "splits": {"train": entry}})
    manifest = read_manifest(tmp_path)
    verify_shards(tmp_path, manifest)
    path = tmp_path / entry["shards"][1]["file"]
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path.name} does not match the sha256"):
        verify_shards(tmp_path, manifest)
    verify_shards(tmp_path, manifest, mode="size")  # size-only check cannot see it
    truncate(path, 1024)
    with pytest.raises(ValueError, match="has 1024 bytes"):
        verify_shards(tmp_path, manifest, mode="size")


@pytest.mark.parametrize(
    "key, file",
    [
        ("splits.train.shards[1].file", "../other/train-000001.tar"),
        ("splits.train.shards[1].file", "/etc/train-000001.tar"),
        ("splits.train.shards[1].file", "sub/../../train-000001.tar"),
        ("splits.train.index.file", "../train.index.npz"),
    ],
)
def test_manifest_file_entries_outside_the_dataset_directory_are_refused(tmp_path, key, file):
    from framework.data.shards import write_manifest

    entry = write_split(tmp_path, "train", _samples(16), 16, min_shards=2)
    if ".index." in key:
        entry["index"]["file"] = file
    else:
        entry["shards"][1]["file"] = file
    path = write_manifest(
        tmp_path, {"name": "x", "tasks": {}, "image_shape": [1, 3, 4], "splits": {"train": entry}}
    )
    with pytest.raises(ValueError) as err:
        read_manifest(tmp_path)
    assert f"{path}: {key} = {file!r} is not a relative path inside the dataset directory" in str(err.value)


def test_a_missing_shard_is_reported_by_verification_not_left_to_the_reader(tmp_path):
    from framework.data.shards import write_manifest

    entry = write_split(tmp_path, "train", _samples(16), 16, min_shards=2)
    write_manifest(tmp_path, {"name": "x", "tasks": {}, "image_shape": [1, 3, 4], "splits": {"train": entry}})
    manifest = read_manifest(tmp_path)
    path = tmp_path / entry["shards"][0]["file"]
    path.unlink()
    expected = f"{path} is missing, listed in .*; re-run `medley prepare x --force`"
    with pytest.raises(ValueError, match=expected):
        verify_shards(tmp_path, manifest, mode="size")
    assert verify_shards(tmp_path, manifest, mode="size", on_error="skip") == {
        path.name: f"is missing, listed in {tmp_path / 'manifest.json'}"
    }
