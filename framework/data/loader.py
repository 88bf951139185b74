"""Streaming shard loader with equal steps per rank and exact resume.

Epoch ``e``'s shard order is a permutation seeded by ``(seed, e)``, identical on every rank;
shards are dealt to ranks, then to workers. Each worker shuffles its *undecoded* samples in
a buffer seeded by ``(seed, e, rank, worker)`` and batches them itself (per-sample IPC is
the slow path). Every batch carries ``(_worker, _count)`` so the trainer can record the data
position: ``{epoch, consumed: {worker: samples}}``. On resume a worker replays the same
order and discards its first ``consumed`` samples before decoding anything.

Equal steps per rank: every rank computes, from the manifest alone, how many full batches
each rank's workers will produce; the epoch ends for everyone after the minimum over
ranks. The dropped tail is logged (no collective, no DDP hang on uneven shards).

``order="global"``: every rank walks the whole split in one seeded order and takes its
slice of each global batch, so global batch ``k`` holds the same sample ids at any world
size (used for DDP/ZeRO parity checks; one worker per rank).

Evaluation reads sample ``i`` on rank ``i % world`` and pads the last batches with masked
rows, so every sample is counted exactly once and every rank runs the same number of batches.
"""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from framework.data.shards import decode_sample, iter_raw_samples

log = logging.getLogger(__name__)


@dataclass
class StreamSpec:
    root: Path
    shards: list[dict]  # manifest entries: file, count, sha256
    batch_size: int
    seed: int = 0
    rank: int = 0
    world: int = 1
    num_workers: int = 0
    shuffle: bool = True
    buffer: int = 1000
    order: str = "local"
    on_error: str = "raise"


def shard_order(spec: StreamSpec, epoch: int) -> list[int]:
    idx = list(range(len(spec.shards)))
    if spec.shuffle:
        random.Random(spec.seed * 1_000_003 + epoch).shuffle(idx)
    return idx


def worker_shards(spec: StreamSpec, epoch: int, rank: int, worker: int) -> list[int]:
    workers = max(spec.num_workers, 1)
    return shard_order(spec, epoch)[rank :: spec.world][worker::workers]


def batches_per_rank(spec: StreamSpec, epoch: int) -> list[int]:
    """Full batches each rank's workers produce this epoch (manifest counts only)."""
    if spec.order == "global":
        total = sum(s["count"] for s in spec.shards)
        return [total // (spec.batch_size * spec.world)] * spec.world
    out = []
    for rank in range(spec.world):
        n = 0
        for w in range(max(spec.num_workers, 1)):
            n += sum(spec.shards[i]["count"] for i in worker_shards(spec, epoch, rank, w)) // spec.batch_size
        out.append(n)
    return out


def check_enough_shards(spec: StreamSpec) -> None:
    slots = spec.world * max(spec.num_workers, 1)
    if spec.order == "local" and len(spec.shards) < slots:
        raise ValueError(
            f"{len(spec.shards)} shards for {spec.world} ranks x {max(spec.num_workers, 1)} workers: "
            f"need at least {slots}; re-prepare with --min-shards {slots} or lower data.num_workers"
        )


class SkipCounter:
    """Counts samples/shards lost to ``on_error=skip``; warns once per shard."""

    def __init__(self):
        self.samples = 0
        self.shards: set[str] = set()


def collate(samples: list[dict], pad_to: int | None = None) -> dict[str, Any]:
    n = len(samples)
    size = pad_to or n
    images = np.stack([s["image"] for s in samples])
    if images.ndim == 3:  # H×W → 1×H×W
        images = images[:, None]
    if size > n:
        images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]), images.dtype)])
    batch: dict[str, Any] = {"image": torch.from_numpy(images).float().div_(255.0)}
    tasks = samples[0].get("labels", {}).keys()
    batch["labels"] = {
        t: torch.tensor([s["labels"].get(t, -1) for s in samples] + [-1] * (size - n), dtype=torch.long)
        for t in tasks
    }
    batch["id"] = torch.tensor([s["id"] for s in samples] + [-1] * (size - n), dtype=torch.long)
    if "mask" in samples[0]:
        masks = np.stack([s["mask"] for s in samples])
        if size > n:
            masks = np.concatenate([masks, np.zeros((size - n, *masks.shape[1:]), masks.dtype)])
        batch["pixel_mask"] = torch.from_numpy(masks.astype(np.int64))
    for key in samples[0].keys() - {"image", "labels", "id", "mask"}:
        value = samples[0][key]
        if isinstance(value, (int, float)):
            batch[key] = torch.tensor([s[key] for s in samples] + [0] * (size - n))
    batch["mask"] = torch.arange(size) < n
    return batch


class ShardStream(IterableDataset):
    """One epoch of training batches for one rank (see module docstring)."""

    def __init__(self, spec: StreamSpec, collate_fn: Callable = collate):
        self.spec, self.collate_fn = spec, collate_fn
        self.epoch, self.skip = 0, {}
        self.skipped = SkipCounter()

    def set_position(self, epoch: int, consumed: dict[int, int] | None = None) -> None:
        self.epoch, self.skip = epoch, dict(consumed or {})

    def _raw(self, files: list[int]) -> Iterator[dict]:
        for i in files:
            path = self.spec.root / self.spec.shards[i]["file"]
            try:
                yield from iter_raw_samples(path)
            except Exception as exc:
                if self.spec.on_error == "raise":
                    raise type(exc)(f"shard {path}: {exc}") from exc
                if str(path) not in self.skipped.shards:
                    warnings.warn(f"skipping the rest of shard {path}: {exc!r}", stacklevel=2)
                self.skipped.shards.add(str(path))

    def _shuffled(self, raw: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        if not self.spec.shuffle:
            yield from raw
            return
        buf: list[dict] = []
        for sample in raw:
            if len(buf) < self.spec.buffer:
                buf.append(sample)
                continue
            j = rng.randrange(len(buf))
            buf[j], sample = sample, buf[j]
            yield sample
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        spec, epoch = self.spec, self.epoch
        if spec.order == "global":
            yield from self._iter_global(worker)
            return
        rng = random.Random(hash((spec.seed, epoch, spec.rank, worker)))
        stream = self._shuffled(self._raw(worker_shards(spec, epoch, spec.rank, worker)), rng)
        skip = self.skip.get(worker, 0)
        pending: list[dict] = []
        for i, raw in enumerate(stream):
            if i < skip:
                continue
            pending.append(decode_sample(raw))
            if len(pending) == spec.batch_size:
                yield {**self.collate_fn(pending), "_worker": worker, "_count": len(pending)}
                pending = []

    def _iter_global(self, worker: int) -> Iterator[dict]:
        spec = self.spec
        rng = random.Random(hash((spec.seed, self.epoch)))
        stream = self._shuffled(self._raw(shard_order(spec, self.epoch)), rng)
        per_global = spec.batch_size * spec.world
        lo, hi = spec.rank * spec.batch_size, (spec.rank + 1) * spec.batch_size
        skip = self.skip.get(worker, 0) * spec.world  # consumed counts this rank's samples only
        pending: list[dict] = []
        for i, raw in enumerate(stream):
            if i < skip:
                continue
            if lo <= i % per_global < hi:
                pending.append(decode_sample(raw))
            if len(pending) == spec.batch_size:
                yield {**self.collate_fn(pending), "_worker": worker, "_count": len(pending)}
                pending = []


class EvalStream(IterableDataset):
    """Sample ``i`` goes to rank ``i % world``; batches padded (``mask``) to equal counts per rank."""

    def __init__(self, spec: StreamSpec, collate_fn: Callable = collate):
        self.spec, self.collate_fn = spec, collate_fn

    def num_batches(self) -> int:
        total = sum(s["count"] for s in self.spec.shards)
        per_rank = -(-total // self.spec.world)
        return -(-per_rank // self.spec.batch_size)

    def __iter__(self) -> Iterator[dict]:
        spec = self.spec
        pending, produced = [], 0
        for i, raw in enumerate(r for s in spec.shards for r in iter_raw_samples(spec.root / s["file"])):
            if i % spec.world != spec.rank:
                continue
            pending.append(decode_sample(raw))
            if len(pending) == spec.batch_size:
                yield self.collate_fn(pending)
                pending, produced = [], produced + 1
        if pending:
            yield self.collate_fn(pending, pad_to=spec.batch_size)
            produced += 1
        template = None
        while produced < self.num_batches():  # ranks with fewer samples emit fully masked batches
            template = template or self.collate_fn([decode_sample(next(iter_raw_samples(spec.root / spec.shards[0]["file"])))], pad_to=spec.batch_size)
            yield {**template, "mask": torch.zeros(spec.batch_size, dtype=torch.bool)}
            produced += 1


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: IterableDataset, num_workers: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        generator=gen,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
