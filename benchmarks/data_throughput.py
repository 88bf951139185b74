"""Data loading throughput: the shard loader vs an in-memory map-style loader, and the share
of a training step spent waiting for data.

    OMP_NUM_THREADS=1 python benchmarks/data_throughput.py [--dataset multimnist] [--batches 150]

Both loaders deliver the same decoded samples of the training split as float batches:

* ``shards``: ``DataModule.epoch_batches()`` (tar shards, shuffle buffer, batching in the workers);
* ``memory``: every sample decoded into numpy arrays first (not timed), then a
  ``torch.utils.data.DataLoader`` over a map-style dataset, shuffled, ``batch_size`` rows
  (images, labels and dense maps, converted per row as the shard loader converts them).

Each is timed with 0 and 2 workers over ``--batches`` batches after a warm-up batch (worker
start-up is excluded), ``--repeats`` times: mean ± std of samples/s. The data-wait share runs
the configured ResNet for ``--steps`` optimizer steps and reports the fraction of wall time
spent in ``next(batches)``. Numbers come from whatever else runs on the machine at the time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framework.config import ModelConfig
from framework.data.episodic import IndexedSplit
from framework.data.module import DataModule
from framework.registry import DATASETS


class InMemory(Dataset):
    """The decoded training split held in numpy arrays; items as the shard loader's rows."""

    def __init__(self, images: np.ndarray, labels: dict[str, np.ndarray], dense: dict[str, np.ndarray]):
        self.images, self.labels, self.dense = images, labels, dense

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = {
            "image": torch.from_numpy(self.images[i]).float().div_(255.0),
            "labels": {t: int(v[i]) for t, v in self.labels.items()},
        }
        if self.dense:
            item["dense"] = {k: torch.from_numpy(v[i].astype(np.int64)) for k, v in self.dense.items()}
        return item


def decode_all(dm: DataModule) -> InMemory:
    split = IndexedSplit(dm.root, "train", dm.manifest["splits"]["train"], dm.tasks)
    samples = [split.read(i) for i in range(len(split))]
    images = np.stack([s["image"] if s["image"].ndim == 3 else s["image"][None] for s in samples])
    labels = {t: np.array([s["labels"].get(t, -1) for s in samples]) for t in dm.tasks}
    keys = [k for k, v in samples[0].items() if k != "image" and isinstance(v, np.ndarray)]
    dense = {k: np.stack([s[k] for s in samples]) for k in keys}
    return InMemory(images, labels, dense)


def rate(batches, n: int, batch_size: int) -> float:
    next(batches)  # warm-up: worker start-up and first prefetch are not throughput
    t0 = time.perf_counter()
    for _ in range(n):
        next(batches)
    return n * batch_size / (time.perf_counter() - t0)


def shard_rate(cfg_cls, data_root: str, workers: int, args) -> float:
    cfg = cfg_cls(batch_size=args.batch_size, num_workers=workers, limit=args.limit)
    dm = DataModule(cfg, data_root, seed=int(time.time()) % 1000)
    return rate(dm.epoch_batches(), args.batches, args.batch_size)


def memory_rate(ds: InMemory, workers: int, args) -> float:
    def forever():
        while True:
            yield from DataLoader(
                ds,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=workers,
                drop_last=True,
                persistent_workers=workers > 0,
            )

    return rate(forever(), args.batches, args.batch_size)


def wait_share(cfg_cls, data_root: str, workers: int, args) -> tuple[float, float]:
    from framework.models import build_multitask

    cfg = cfg_cls(batch_size=args.batch_size, num_workers=workers, limit=args.limit)
    dm = DataModule(cfg, data_root, seed=0)
    torch.manual_seed(0)
    model = build_multitask(ModelConfig(widths=[16, 32, 64]), dm.info)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = dm.epoch_batches()
    next(batches)
    wait = total = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        out = model(batch["image"])
        loss = sum(
            torch.nn.functional.cross_entropy(o, batch["labels"][t], ignore_index=-1) for t, o in out.items()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        wait += t1 - t0
        total += time.perf_counter() - t0
    return wait / total, args.steps * args.batch_size / total


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):8.0f} ± {sd:5.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="multimnist")
    p.add_argument(
        "--data-root", default=os.environ.get("MEDLEY_DATA") or tempfile.mkdtemp(prefix="medley-bench-")
    )
    p.add_argument(
        "--limit", type=int, default=None, help="smaller prepared copy (default: the full dataset)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg_cls = DATASETS.get(args.dataset).config
    dm = DataModule(cfg_cls(limit=args.limit), args.data_root, seed=0)  # prepares on first use
    print(
        f"dataset {args.dataset}: {dm.manifest['splits']['train']['count']} training samples, "
        f"image {dm.info.image_shape}, batch {args.batch_size}, {args.batches} batches x {args.repeats} repeats"
    )
    memory = decode_all(dm)
    print(f"{'loader':10s} {'workers':>7s} {'samples/s (mean ± std)':>24s}")
    for workers in (0, 2):
        shards = [shard_rate(cfg_cls, args.data_root, workers, args) for _ in range(args.repeats)]
        mem = [memory_rate(memory, workers, args) for _ in range(args.repeats)]
        print(f"{'shards':10s} {workers:7d} {fmt(shards):>24s}")
        print(f"{'memory':10s} {workers:7d} {fmt(mem):>24s}")
    print(
        f"training step with data.num_workers=N ({args.steps} steps, ResNet widths [16, 32, 64], 1 thread):"
    )
    for workers in (0, 2):
        share, sps = wait_share(cfg_cls, args.data_root, workers, args)
        print(
            f"  workers {workers}: data wait {100 * share:5.1f} % of step time, {sps:6.0f} samples/s end to end"
        )


if __name__ == "__main__":
    main()
