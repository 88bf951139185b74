"""Streaming shard reader: what one DataLoader worker produces, and evaluation streams.

Epoch ``e`` of a split has one shard order, a permutation seeded by ``(seed, split, e)`` and
identical on every rank; shards are dealt to ranks, then to *logical* workers
(``max(num_workers, 1)`` of them). Each logical worker shuffles its *undecoded* samples in a
buffer seeded by ``(seed, split, e, rank, worker)``, decodes and batches them itself
(per-sample IPC is the slow path). The position of a worker is the number of raw samples it
has consumed: on resume it replays the same order and discards that many before decoding
anything, which is exact even with a shuffle buffer (skipping raw tar members is not).

Every batch carries ``_worker``, ``_epoch`` and ``_pos`` (each row's raw position in its
worker's stream) for the main process to keep the position, and ``_errors`` (samples lost to
``on_error=skip`` since the previous batch). How many rows a worker delivers, and which
physical DataLoader worker serves which logical worker, is decided in the main process
(``framework.data.cursor``); this module only follows that plan.

``order="global"``: every rank and worker walks the whole split in one seeded order; global
batch ``k`` consists of the stream's samples ``[k·B·world, (k+1)·B·world)``, rank ``r`` takes
its ``B`` of them and logical worker ``k mod W`` produces it. Global batch ``k`` therefore
holds the same ids at any world size (DDP/ZeRO parity checks).

Evaluation: sample ``i`` of the split (in file order) goes to rank ``i mod world``; the last
batches are padded with masked rows, and ranks with fewer samples emit fully masked batches,
so every sample is counted exactly once and every rank runs the same number of batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from framework.data.shards import ShardError, decode_sample, is_remote, iter_raw_samples, shard_location

IGNORE = 255  # value of a dense-map pixel without a label on disk; -1 in batches


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
    tasks: tuple[str, ...] = ()
    name: str = "train"  # split name: part of every seed, and of messages
    attrs: tuple[str, ...] = ()  # per-sample attributes every batch carries (-1 = unknown)
    refused: dict[str, str] = field(default_factory=dict)  # file -> why, refused at start-up (on_error=skip)
    verify: str = "sha256"  # remote shards are hashed while read under "sha256" (local ones at start-up)

    @property
    def workers(self) -> int:
        return max(self.num_workers, 1)


@dataclass
class WorkerPlan:
    """What each logical worker does this epoch (decided in the main process)."""

    epoch: int
    skip: list[int]  # raw samples to discard first, per logical worker
    rows: list[int | None]  # rows to deliver (None: all), per logical worker
    delivered: list[int]  # rows delivered before (keeps batch boundaries where they were)
    rotation: int = 0  # physical DataLoader worker i serves logical worker (rotation + i) % W
    full_batches: bool = False  # drop a short last batch (batch mode: every step has batch_size rows)


# ------------------------------------------------------------------------- dealing shards
def shard_order(spec: StreamSpec, epoch: int) -> list[int]:
    idx = list(range(len(spec.shards)))
    if spec.shuffle:
        random.Random(f"{spec.seed}/{spec.name}/{epoch}").shuffle(idx)
    return idx


def worker_shards(spec: StreamSpec, epoch: int, rank: int, worker: int) -> list[int]:
    return shard_order(spec, epoch)[rank :: spec.world][worker :: spec.workers]


def worker_rows(spec: StreamSpec, epoch: int, rank: int) -> list[int]:
    """Samples each logical worker of ``rank`` reads this epoch (manifest counts only)."""
    return [
        sum(spec.shards[i]["count"] for i in worker_shards(spec, epoch, rank, w)) for w in range(spec.workers)
    ]


def cycle_order(batches: list[int]) -> list[int]:
    """The worker of each batch when a DataLoader takes workers in turn, skipping exhausted ones."""
    left, out, w = list(batches), [], 0
    total = sum(left)
    while len(out) < total:
        if left[w] > 0:
            out.append(w)
            left[w] -= 1
        w = (w + 1) % len(left)
    return out


def batches_per_rank(spec: StreamSpec, epoch: int) -> list[int]:
    """Full batches each rank can produce this epoch (manifest counts only)."""
    if spec.order == "global":
        total = sum(s["count"] for s in spec.shards)
        return [total // (spec.batch_size * spec.world)] * spec.world
    return [sum(r // spec.batch_size for r in worker_rows(spec, epoch, rank)) for rank in range(spec.world)]


def batch_quotas(spec: StreamSpec, epoch: int, steps: int) -> list[int]:
    """Batches each logical worker of this rank delivers so that the rank delivers ``steps``."""
    if spec.order == "global":
        return [len(range(w, steps, spec.workers)) for w in range(spec.workers)]
    full = [r // spec.batch_size for r in worker_rows(spec, epoch, spec.rank)]
    seq = cycle_order(full)[:steps]
    return [seq.count(w) for w in range(spec.workers)]


def check_enough_shards(spec: StreamSpec) -> None:
    slots = spec.world * spec.workers
    if spec.order == "local" and len(spec.shards) < slots:
        raise ValueError(
            f"split '{spec.name}' has {len(spec.shards)} shards for {spec.world} ranks x {spec.workers} workers: "
            f"need at least {slots} shards; re-prepare with --min-shards {slots} or lower data.num_workers"
        )


# ------------------------------------------------------------------------------- batches
def collate(
    samples: list[dict],
    tasks: tuple[str, ...] | list[str] = (),
    pad_to: int | None = None,
    attrs: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Samples → a batch of numpy arrays, as compact as the shards (``finalize`` makes tensors).

    Every task in ``tasks`` gets a label row per sample (-1 where a sample is not labelled for
    it, and on padding rows); dense maps go to ``dense[name]`` (uint8 here, 255 = no label);
    ``domain``/``source``/``person`` ids and ``attrs`` (every name in ``attrs``, -1 where
    unknown) become int64 rows. Workers send numpy arrays: pickled through the pipe they cost
    less than one shared-memory segment per tensor.
    """
    n = len(samples)
    size = pad_to or n
    pad = size - n

    def stack(arrays: list[np.ndarray], fill: int) -> np.ndarray:
        out = np.stack(arrays)
        if pad:
            out = np.concatenate([out, np.full((pad, *out.shape[1:]), fill, out.dtype)])
        return out

    def ints(values: list[int]) -> np.ndarray:
        return np.array(values + [-1] * pad, dtype=np.int64)

    images = stack([s["image"] if s["image"].ndim == 3 else s["image"][None] for s in samples], 0)
    tasks = list(tasks) or sorted({t for s in samples for t in s.get("labels", {})})
    batch: dict[str, Any] = {"image": images}
    batch["labels"] = {t: ints([s.get("labels", {}).get(t, -1) for s in samples]) for t in tasks}
    batch["id"] = ints([s["id"] for s in samples])
    first = samples[0]
    dense = {
        key: stack([s[key] for s in samples], IGNORE)
        for key, value in first.items()
        if key != "image" and isinstance(value, np.ndarray)
    }
    if dense:
        batch["dense"] = dense
    for key in ("domain", "source", "person"):
        if key in first:
            batch[key] = ints([s.get(key, -1) for s in samples])
    if "attrs" in first:
        names = list(attrs) or sorted({k for s in samples for k in s.get("attrs", {})})
        batch["attrs"] = {k: ints([s.get("attrs", {}).get(k, -1) for s in samples]) for k in names}
    batch["mask"] = np.arange(size) < n
    return batch


def to_tensors(batch: Any) -> Any:
    """numpy arrays → tensors (nested dicts too; other values unchanged)."""
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch)
    if isinstance(batch, dict):
        return {k: to_tensors(v) for k, v in batch.items()}
    return batch


def finalize(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch the trainer sees: tensors, images float in [0, 1], dense maps int64 with -1
    for unlabelled pixels (and ``pixel_mask``, the engine's name for ``dense["seg"]``).
    Done in the main process, after the IPC hop: uint8 crosses it, 4-8x fewer bytes."""
    batch = to_tensors(batch)
    if batch["image"].dtype == torch.uint8:
        batch["image"] = batch["image"].float().div_(255.0)
    dense = batch.get("dense")
    if dense:
        for key, maps in dense.items():
            if maps.dtype == torch.uint8:
                dense[key] = maps.long().masked_fill_(maps == IGNORE, -1)
        if "seg" in dense:
            batch["pixel_mask"] = dense["seg"]
    return batch


def concat_batches(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Row-wise concatenation of collated batches with the same keys (nested dicts included)."""
    out: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([p[key] for p in parts])
        elif isinstance(value, dict):
            out[key] = concat_batches([p[key] for p in parts])
    return out


def take_rows(batch: dict[str, Any], rows: slice | torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[rows]
        elif isinstance(value, dict):
            out[key] = take_rows(value, rows)
    return out


# ---------------------------------------------------------------------------- the stream
def read_shard(spec: StreamSpec, i: int, errors: list | None) -> Iterator[dict]:
    """Raw samples of shard ``i`` with ``on_error`` applied: raise naming the shard, or
    record ``(file, samples lost, reason)`` in ``errors`` and stop reading this shard. A shard
    refused at start-up (``spec.refused``) is not opened: all its samples count as lost."""
    shard = spec.shards[i]
    if shard["file"] in spec.refused:
        if spec.on_error == "raise" or errors is None:
            raise ShardError(shard_location(spec.root, shard["file"]), 0, spec.refused[shard["file"]])
        why = spec.refused[shard["file"]]
        errors.append((shard["file"], shard["count"], f"{why} (refused before reading)"))
        return
    try:
        remote_hash = shard.get("sha256") if spec.verify == "sha256" and is_remote(shard["file"]) else None
        for raw in iter_raw_samples(shard_location(spec.root, shard["file"]), expected=shard["count"],
                                    sha256=remote_hash):
            raw["__shard__"] = i
            yield raw
    except ShardError as exc:
        if spec.on_error == "raise" or errors is None:
            raise
        errors.append((shard["file"], max(shard["count"] - exc.good, 0), exc.detail))


def decode_or_report(spec: StreamSpec, raw: dict, errors: list | None) -> dict | None:
    try:
        return decode_sample(raw)
    except Exception as exc:
        file = spec.shards[raw["__shard__"]]["file"]
        detail = f"sample {raw['__key__']} cannot be decoded: {type(exc).__name__}: {exc}"
        if spec.on_error == "raise" or errors is None:
            raise ShardError(shard_location(spec.root, file), 0, detail) from exc
        errors.append((file, 1, detail))
        return None


class ShardStream(IterableDataset):
    """The batches of one epoch for one rank, following a ``WorkerPlan`` (see module docstring)."""

    def __init__(self, spec: StreamSpec, collate_fn: Callable = collate):
        self.spec, self.collate_fn = spec, collate_fn
        self.plan = WorkerPlan(0, [0] * spec.workers, [None] * spec.workers, [0] * spec.workers)

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

    def raw_stream(self, epoch: int, worker: int, errors: list) -> Iterator[tuple[int, dict]]:
        """(position, raw sample) pairs this logical worker may deliver, in stream order."""
        spec = self.spec
        if spec.order == "global":
            rng = random.Random(f"{spec.seed}/{spec.name}/{epoch}/global")
            files = shard_order(spec, epoch)
            per_global = spec.batch_size * spec.world
            lo, hi = spec.rank * spec.batch_size, (spec.rank + 1) * spec.batch_size
        else:
            rng = random.Random(f"{spec.seed}/{spec.name}/{epoch}/{spec.rank}/{worker}")
            files = worker_shards(spec, epoch, spec.rank, worker)
        raw = (r for i in files for r in read_shard(spec, i, errors))
        for pos, sample in enumerate(self._shuffled(raw, rng)):
            if spec.order == "global":
                k, slot = divmod(pos, per_global)
                if k % spec.workers != worker or not lo <= slot < hi:
                    continue
            yield pos, sample

    def worker_batches(self, worker: int, plan: WorkerPlan) -> Iterator[dict]:
        spec, bs = self.spec, self.spec.batch_size
        skip, limit, before = plan.skip[worker], plan.rows[worker], plan.delivered[worker]
        if limit is not None and limit <= 0:
            return
        errors: list = []
        rows, positions = [], []

        def emit() -> dict:
            batch = self.collate_fn(rows, spec.tasks, attrs=spec.attrs)
            batch.update(_worker=worker, _epoch=plan.epoch, _pos=list(positions), _errors=list(errors))
            rows.clear(), positions.clear(), errors.clear()
            return batch

        emitted = 0
        for pos, raw in self.raw_stream(plan.epoch, worker, errors):
            if pos < skip:
                continue
            sample = decode_or_report(spec, raw, errors)
            if sample is None:
                continue
            rows.append(sample)
            positions.append(pos)
            emitted += 1
            if (before + emitted) % bs == 0:
                yield emit()
            if limit is not None and emitted >= limit:
                break
        if rows and not plan.full_batches:
            yield emit()
        if errors:
            yield {"_report": True, "_worker": worker, "_epoch": plan.epoch, "_errors": list(errors)}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        yield from self.worker_batches((self.plan.rotation + physical) % self.spec.workers, self.plan)


# ---------------------------------------------------------------------------- evaluation
class EvalStream(IterableDataset):
    """Sample ``i`` goes to rank ``i % world``; batches padded (``mask``) to equal counts per rank."""

    def __init__(self, spec: StreamSpec, collate_fn: Callable = collate, on_errors: Callable | None = None):
        self.spec, self.collate_fn, self.on_errors = spec, collate_fn, on_errors

    def num_batches(self) -> int:
        total = sum(s["count"] for s in self.spec.shards)
        per_rank = -(-total // self.spec.world)
        return -(-per_rank // self.spec.batch_size)

    def __iter__(self) -> Iterator[dict]:
        spec = self.spec
        errors: list = []
        pending, produced, template = [], 0, None
        raw = (r for i in range(len(spec.shards)) for r in read_shard(spec, i, errors))
        for i, sample in enumerate(raw):
            if i % spec.world != spec.rank:
                if template is None:
                    template = decode_or_report(spec, sample, None if spec.on_error == "raise" else [])
                continue
            decoded = decode_or_report(spec, sample, errors)
            if decoded is None:
                continue
            pending.append(decoded)
            template = template or decoded
            if len(pending) == spec.batch_size:
                yield finalize(self.collate_fn(pending, spec.tasks, attrs=spec.attrs))
                pending, produced = [], produced + 1
        if pending:
            yield finalize(self.collate_fn(pending, spec.tasks, pad_to=spec.batch_size, attrs=spec.attrs))
            produced += 1
        if errors and self.on_errors is not None:
            self.on_errors(errors)
        while produced < self.num_batches():  # ranks with fewer samples emit fully masked batches
            if template is None:
                raise RuntimeError(f"split '{spec.name}': rank {spec.rank} read no sample to pad with")
            filler = finalize(
                self.collate_fn([template], spec.tasks, pad_to=spec.batch_size, attrs=spec.attrs)
            )
            filler["mask"][:] = False
            filler["id"][:] = -1
            yield filler
            produced += 1


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _as_is(item: Any) -> Any:
    return item


def make_loader(dataset: IterableDataset, num_workers: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=None,
        collate_fn=_as_is,  # keep numpy arrays: the default would make tensors in the worker
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        generator=gen,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
