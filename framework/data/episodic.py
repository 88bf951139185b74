"""Random-access sampling through the split index: P×K episodes and balanced auxiliary batches.

The index written with every split (``<split>.index.npz``) holds each sample's shard, byte
offset and integer labels, so a sampler picks sample numbers first and reads only those.
Episodes are drawn with replacement across steps (metric and meta learning want fresh
identity combinations, not epochs); their generator state is part of the data position, so a
resumed run draws the same episodes. Each rank draws its own episodes (seeded by its rank).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from framework.data.loader import collate, finalize
from framework.data.shards import ShardError, decode_sample, is_remote, load_index, read_sample_at


class IndexedSplit:
    """One split, readable sample by sample (file handles opened lazily, per process)."""

    def __init__(
        self,
        root: Path,
        name: str,
        entry: dict[str, Any],
        tasks: tuple[str, ...],
        attrs: tuple[str, ...] = (),
        refused: Collection[str] = (),
    ):
        """``refused``: shard files left out (``data.on_error=skip``): their samples are never drawn."""
        self.root, self.name, self.entry, self.tasks, self.attrs = Path(root), name, entry, tasks, attrs
        self.index = load_index(root, entry)
        bad = [k for k, shard in enumerate(entry["shards"]) if shard["file"] in refused]
        if bad:
            keep = ~np.isin(self.index["shard"], bad)
            self.index = {key: column[keep] for key, column in self.index.items()}
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.index["id"])

    def column(self, key: str) -> np.ndarray:
        """Per-sample integer field: ``label.<task>``, ``domain``, ``attr.<name>``, ``id``..."""
        if key not in self.index and key.startswith(("label.", "attr.")):
            return np.full(len(self), -1, np.int64)  # no sample of this split carries it
        if key not in self.index:
            have = sorted(k for k in self.index if k not in ("shard", "offset", "length"))
            raise KeyError(f"split '{self.name}' has no per-sample field '{key}' (has {have})")
        return self.index[key]

    def read(self, i: int) -> dict[str, Any]:
        shard = int(self.index["shard"][i])
        name = self.entry["shards"][shard]["file"]
        if is_remote(name):
            raise ShardError(name, 0, f"split '{self.name}' is read by random access (episodes, auxiliary "
                             "batches), which needs local shards; copy the shards to local disk for this split")
        file = self.root / name
        if shard not in self._files:
            try:
                self._files[shard] = open(file, "rb")  # noqa: SIM115 - kept open for random access, closed in close()
            except OSError as exc:
                raise ShardError(file, 0, f"{type(exc).__name__}: {exc}") from exc
        raw = read_sample_at(
            self._files[shard], int(self.index["offset"][i]), int(self.index["length"][i]), file
        )
        return decode_sample(raw)

    def batch(self, rows: np.ndarray) -> dict[str, Any]:
        return finalize(collate([self.read(int(i)) for i in rows], self.tasks, attrs=self.attrs))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


class EpisodeSampler:
    """Per step, ``{domain: batch}`` with P groups × K samples each (groups: e.g. identities).

    ``P`` is global: every rank draws the same episode (one generator seeded by ``seed``) and
    keeps its block of ``P / world`` groups, so the global batch is the same at any world size
    (data-parallel parity) and ranks never share a group within a step. A group is eligible
    when it has at least 2 samples; groups with fewer than K samples are drawn with
    replacement inside the group, and a domain with fewer than P eligible groups repeats groups
    (both counted in ``info``).
    """

    def __init__(
        self,
        splits: dict[str, IndexedSplit],
        group: str,
        p: int,
        k: int,
        seed: int,
        rank: int,
        world: int = 1,
    ):
        if p % world:
            raise ValueError(f"data.episode_p={p} identities per domain do not divide among {world} ranks")
        self.splits, self.group, self.p, self.k = splits, group, p, k
        self.rank, self.world = rank, world
        self.rng = np.random.default_rng([seed, 0x657069])
        self.groups: dict[str, list[np.ndarray]] = {}
        self.info: dict[str, dict[str, int]] = {}
        for name, split in splits.items():
            labels = split.column(f"label.{group}")
            order = np.argsort(labels, kind="stable")
            values, starts = np.unique(labels[order], return_index=True)
            members = np.split(order, starts[1:])
            eligible = [m for v, m in zip(values, members) if v >= 0 and len(m) >= 2]
            if not eligible:
                raise ValueError(f"episodes: domain '{name}' has no {group} with two or more samples")
            self.groups[name] = eligible
            self.info[name] = {
                "groups": len(eligible),
                "groups_below_k": sum(len(m) < k for m in eligible),
                "repeats_groups": int(len(eligible) < p),
            }

    def draw(self, name: str) -> np.ndarray:
        """Sample numbers of one P×K episode of domain ``name`` (P blocks of K, same group)."""
        groups = self.groups[name]
        chosen = self.rng.choice(len(groups), size=self.p, replace=len(groups) < self.p)
        rows = [self.rng.choice(groups[g], size=self.k, replace=len(groups[g]) < self.k) for g in chosen]
        return np.concatenate(rows)

    def __iter__(self) -> Iterator[dict[str, dict]]:
        block = self.p // self.world * self.k
        while True:
            episode = {name: self.draw(name) for name in self.splits}  # the same draws on every rank
            yield {
                name: self.splits[name].batch(rows[self.rank * block : (self.rank + 1) * block])
                for name, rows in episode.items()
            }

    def state_dict(self) -> dict:
        return {"rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class BalancedSampler:
    """Batches drawn with equal probability from each level of one per-sample field (e.g.
    ``domain`` or ``attr.light``), uniformly inside a level; ``balance=""`` draws uniformly."""

    def __init__(self, split: IndexedSplit, batch_size: int, balance: str, seed: int, rank: int, name: str):
        self.split, self.batch_size, self.balance = split, batch_size, balance
        self.rng = np.random.default_rng([seed, rank, sum(name.encode()), 0x617578])
        if balance:
            values = split.column(balance if balance in split.index else f"label.{balance}")
            self.levels = [np.flatnonzero(values == v) for v in np.unique(values) if v >= 0]
        else:
            self.levels = [np.arange(len(split))]
        if not self.levels or not len(split):
            raise ValueError(f"auxiliary stream '{name}': split '{split.name}' has nothing to sample")

    def draw(self) -> np.ndarray:
        level = self.rng.integers(len(self.levels), size=self.batch_size)
        return np.array([self.levels[v][self.rng.integers(len(self.levels[v]))] for v in level])

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return self.split.batch(self.draw())

    def state_dict(self) -> dict:
        return {"rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
