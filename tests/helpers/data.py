"""A tiny registered dataset with chosen shard sizes, and shard-damaging helpers for tests.

``toy_data`` writes 4×4 images whose pixels encode the sample id, so tests control shard
counts exactly (uneven shards, few shards) without any real source. With ``sources`` > 0 it
declares that many training sources (``train.s0``...), each labelled for its own task.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from framework.data.builtin import PreparedDataConfig
from framework.data.shards import MANIFEST, load_index, write_manifest, write_split
from framework.registry import register_dataset


@register_dataset("toy_data", impl="tests.helpers.data:prepare_toy")
@dataclass
class ToyConfig(PreparedDataConfig):
    """Synthetic 4x4 samples with exact shard counts (tests only)."""

    name: str = "toy_data"
    shard_counts: list = field(default_factory=lambda: [64] * 8)
    eval_counts: list = field(default_factory=lambda: [25] * 8)
    sources: int = 0  # > 0: that many training sources instead of one train split


def toy_samples(n: int, start: int, task: str = "cls", source: int | None = None):
    for i in range(start, start + n):
        sample = {"image": np.full((4, 4), i % 251, np.uint8), "id": i, "labels": {task: i % 3}}
        if source is not None:
            sample["source"] = source
        yield sample


def _write_counts(
    out_dir: Path, split: str, counts: list[int], start: int, task: str = "cls", source: int | None = None
) -> dict:
    """One ``write_split`` per shard so that shard sizes are exactly ``counts``; the parts'
    indexes are merged into the split's index (random access: auxiliary streams)."""
    entry = {"count": 0, "shards": []}
    offset, parts = start, []
    for k, n in enumerate(counts):
        part = write_split(out_dir, f"{split}.part{k}", toy_samples(n, offset, task, source), n, min_shards=1)
        shard = part["shards"][0]
        target = out_dir / f"{split}-{k:06d}.tar"
        (out_dir / shard["file"]).rename(target)
        shard["file"] = target.name
        index = load_index(out_dir, part)
        index["shard"][:] = k
        parts.append(index)
        (out_dir / part["index"]["file"]).unlink()
        entry["shards"].append(shard)
        entry["count"] += n
        offset += n
    index_file = out_dir / f"{split}.index.npz"
    np.savez(index_file, **{key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    entry["index"] = {"file": index_file.name, "sha256": hashlib.sha256(index_file.read_bytes()).hexdigest()}
    return entry


def prepare_toy(cfg, out_dir: Path, limit: int | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    splits, sources = {}, {}
    tasks = {"cls": {"classes": ["a", "b", "c"]}}
    if cfg.sources:
        start = 0
        for s in range(cfg.sources):
            task = f"t{s}"
            tasks[task] = {"classes": ["a", "b", "c"]}
            splits[f"train.s{s}"] = _write_counts(
                out_dir, f"train.s{s}", list(cfg.shard_counts), start, task, s
            )
            sources[f"s{s}"] = {"split": f"train.s{s}"}
            start += sum(cfg.shard_counts)
        del tasks["cls"]
    else:
        splits["train"] = _write_counts(out_dir, "train", list(cfg.shard_counts), 0)
    for k, split in enumerate(("val", "test")):
        splits[split] = _write_counts(
            out_dir, split, list(cfg.eval_counts), 0, next(iter(tasks)), 0 if cfg.sources else None
        )
    manifest = {"name": "toy_data", "tasks": tasks, "image_shape": [1, 4, 4], "splits": splits}
    if sources:
        manifest["sources"] = sources
    return write_manifest(out_dir, manifest)


def shard_path(root: Path, split: str, k: int) -> Path:
    return root / json.loads((root / MANIFEST).read_text())["splits"][split]["shards"][k]["file"]


def truncate(path: Path, keep_bytes: int) -> None:
    path.write_bytes(path.read_bytes()[:keep_bytes])


def randomize(path: Path, seed: int = 0) -> None:
    """Replace a shard by random bytes of the same size."""
    path.write_bytes(
        np.random.default_rng(seed).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes()
    )


def change_byte(path: Path, offset: int = 2000) -> None:
    """Flip one bit: same size, different sha256 (a shard changed since it was prepared)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def sample_offsets(path: Path) -> list[int]:
    """Byte offset of each sample's first member in a toy shard (two members per sample)."""
    data, offsets, pos = path.read_bytes(), [], 0
    while pos + 512 <= len(data) and data[pos : pos + 512] != b"\0" * 512:
        name = data[pos : pos + 100].split(b"\0")[0].decode()
        size = int(data[pos + 124 : pos + 136].split(b"\0")[0].strip() or b"0", 8)
        if name.endswith(".image.npy"):
            offsets.append(pos)
        pos += 512 + size + (-size % 512)
    return offsets


def ddp_epoch(rank: int, world: int, root: str, counts: list[int], damaged: int | None) -> dict:
    """One epoch as DDP runs it: a gradient-sized all-reduce per batch, then a barrier.

    A rank with more batches than the other would block in the all-reduce until the
    collective timeout; returning at all proves both ranks ran the same number of steps.
    """
    import torch
    import torch.distributed as dist

    from framework.data.module import DataModule

    dm = DataModule(
        ToyConfig(shard_counts=counts, batch_size=16, num_workers=2, on_error="skip"),
        root,
        seed=0,
        rank=rank,
        world=world,
    )
    dist.barrier()  # both ranks verified the shards before one is damaged
    if damaged is not None and rank == 0:
        truncate(
            shard_path(dm.root, "train", damaged), sample_offsets(shard_path(dm.root, "train", damaged))[5]
        )
    dist.barrier()
    steps, ids = dm.steps_in_epoch(0), []
    batches = dm.epoch_batches()
    for _ in range(steps):
        batch = next(batches)
        ids += batch["id"].tolist()
        grad = torch.ones(1000)
        dist.all_reduce(grad)
    dist.barrier()
    return {"steps": steps, "ids": ids, "skipped": dm.skipped.samples}
