"""From a data config to prepared shards and loaders for one rank."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from framework.config import DataConfig
from framework.data.info import DataInfo
from framework.data.loader import (
    EvalStream,
    ShardStream,
    StreamSpec,
    batches_per_rank,
    check_enough_shards,
    make_loader,
)
from framework.data.shards import MANIFEST, read_manifest, verify_shards
from framework.registry import DATASETS

log = logging.getLogger(__name__)

_LOADER_KEYS = {f.name for f in dataclasses.fields(DataConfig)} - {"name", "limit"}


def prepared_dir(cfg: Any, data_root: str | Path) -> Path:
    """``<data_root>/<name>`` for the default construction, else ``<name>-<hash of its prepare keys>``."""
    keys = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _LOADER_KEYS and k != "name"}
    defaults = {
        k: v for k, v in dataclasses.asdict(type(cfg)()).items() if k not in _LOADER_KEYS and k != "name"
    }
    root = Path(data_root).expanduser()
    if keys == defaults:
        return root / cfg.name
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return root / f"{cfg.name}-{digest}"


def prepare(cfg: Any, out_dir: Path, force: bool = False) -> Path:
    """Write the dataset's shards once (file lock: concurrent ranks or nodes wait, then reuse)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if (out_dir / MANIFEST).exists() and not force:
            return out_dir
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.time()
        log.info("preparing dataset %s into %s", cfg.name, out_dir)
        DATASETS.get(cfg.name).load()(cfg, tmp, limit=cfg.limit)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        log.info("prepared %s in %.1f s", cfg.name, time.time() - t0)
    return out_dir


class DataModule:
    """Train and eval loaders of one rank; the data position is part of the checkpoint."""

    def __init__(self, cfg: Any, data_root: str | Path, seed: int, rank: int = 0, world: int = 1):
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world
        self.root = prepare(cfg, prepared_dir(cfg, data_root))
        self.manifest = read_manifest(self.root)
        verify_shards(self.root, self.manifest, "train")
        self.info = DataInfo.from_manifest(self.manifest)
        self.train = ShardStream(self.spec("train", cfg.batch_size, shuffle=True))
        check_enough_shards(self.train.spec)
        self.epoch, self.consumed = 0, {}

    def spec(self, split: str, batch_size: int, shuffle: bool) -> StreamSpec:
        if split not in self.manifest["splits"]:
            raise KeyError(f"split '{split}' not in {self.root / MANIFEST} (has {list(self.manifest['splits'])})")
        c = self.cfg
        return StreamSpec(
            root=self.root,
            shards=self.manifest["splits"][split]["shards"],
            batch_size=batch_size,
            seed=self.seed,
            rank=self.rank,
            world=self.world,
            num_workers=c.num_workers if split == "train" else 0,
            shuffle=shuffle,
            buffer=c.shuffle_buffer,
            order=c.order if split == "train" else "local",
            on_error=c.on_error,
        )

    # --- training stream -------------------------------------------------------------------
    def steps_in_epoch(self, epoch: int) -> int:
        per_rank = batches_per_rank(self.train.spec, epoch)
        steps = min(per_rank)
        total = sum(s["count"] for s in self.train.spec.shards)
        dropped = total - steps * self.cfg.batch_size * self.world
        if self.rank == 0 and epoch == 0:
            log.info(
                "epoch = %d batches per rank (min over ranks of %s); %d of %d samples dropped per epoch",
                steps, per_rank, dropped, total,
            )
        if steps == 0:
            raise ValueError(
                f"data.batch_size={self.cfg.batch_size} leaves no full batch per rank "
                f"({total} samples, {self.world} ranks, {max(self.cfg.num_workers, 1)} workers)"
            )
        return steps

    def epoch_batches(self):
        """Yield the current epoch's batches from the recorded position; advances the epoch at its end."""
        while True:
            self.train.set_position(self.epoch, self.consumed)
            n = self.steps_in_epoch(self.epoch) - sum(self.consumed.values()) // self.cfg.batch_size
            loader = make_loader(self.train, self.cfg.num_workers, self.seed + 7919 * self.epoch + self.rank)
            it = iter(loader)
            for _ in range(n):
                batch = next(it)
                w = batch.pop("_worker")
                self.consumed[w] = self.consumed.get(w, 0) + batch.pop("_count")
                yield batch
            del it, loader
            self.epoch, self.consumed = self.epoch + 1, {}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": {int(k): int(v) for k, v in self.consumed.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.consumed = {int(k): int(v) for k, v in state["consumed"].items()}

    # --- evaluation ------------------------------------------------------------------------
    def eval_loader(self, split: str):
        return make_loader(EvalStream(self.spec(split, self.cfg.eval_batch_size, shuffle=False)), 0, self.seed)
