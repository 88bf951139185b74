"""An in-memory episodic data module: per-domain P×K batches from arrays held in RAM.

For miniatures whose data is built on the fly (synthetic domains of digits, a few hundred
face images). It offers what the trainer reads from a data module — ``info``, ``manifest``,
``epoch_batches()``, ``eval_loader(split)``, ``state_dict()`` — and yields each step
``{domain: {"image", "labels": {"identity"}, "id", "mask"}}`` with P identities × K images,
identity-major. The global batch is drawn first and then cut by identity blocks per rank,
so any world size sees the same global batch (data-parallel parity).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from framework.data.info import DataInfo


class MemoryEpisodes:
    def __init__(self, train: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 evals: dict[str, tuple[torch.Tensor, torch.Tensor]], num_identities: int, p: int, k: int,
                 seed: int = 0, rank: int = 0, world: int = 1, eval_batch_size: int = 256,
                 flip_p: float = 0.0, extra: dict | None = None, name: str = "episodes"):
        """Args:
            train: ``{domain: (images [N,C,H,W] float in [0,1], identity labels [N])}``.
            evals: ``{split: (images, labels)}``; labels only need to be equal within an identity.
            num_identities: classifier size (training identities are 0..num_identities-1).
            p, k: identities per domain batch and images per identity.
            flip_p: probability of a horizontal flip of a training image.
        """
        if p % world:
            raise ValueError(f"P={p} identities per domain must divide among {world} ranks")
        self.train, self.evals = train, evals
        self.p, self.k, self.rank, self.world = p, k, rank, world
        self.flip_p, self.eval_batch_size = flip_p, eval_batch_size
        self.rng = np.random.default_rng(seed)
        self.by_identity = {}
        for dom, (_, labels) in train.items():
            ids = {}
            for row, y in enumerate(labels.tolist()):
                ids.setdefault(y, []).append(row)
            usable = {y: np.array(rows) for y, rows in ids.items() if len(rows) >= k}
            if len(usable) < p:
                raise ValueError(f"domain '{dom}': {len(usable)} identities with >= {k} images, need P={p}")
            self.by_identity[dom] = usable
        shape = tuple(next(iter(train.values()))[0].shape[1:])
        self.info = DataInfo(name=name, tasks={"identity": num_identities}, image_shape=shape, extra=extra or {})
        self.manifest = {"splits": {s: {} for s in ["train", *evals]}}

    def episode(self) -> dict[str, dict]:
        """One global episode (every rank draws it), cut to this rank's identity block."""
        out = {}
        for dom in sorted(self.train):
            images, labels = self.train[dom]
            pool = self.by_identity[dom]
            keys = np.array(sorted(pool))
            chosen = self.rng.choice(keys, size=self.p, replace=False)
            rows = np.concatenate([self.rng.choice(pool[y], size=self.k, replace=False) for y in chosen])
            flips = self.rng.random(len(rows)) < self.flip_p
            block = slice(self.rank * len(rows) // self.world, (self.rank + 1) * len(rows) // self.world)
            rows, flips = torch.from_numpy(rows[block]), torch.from_numpy(flips[block])
            x = images[rows].clone()
            x[flips] = x[flips].flip(-1)
            out[dom] = {"image": x, "labels": {"identity": labels[rows]}, "id": rows,
                        "mask": torch.ones(len(rows), dtype=torch.bool)}
        return out

    def epoch_batches(self) -> Iterator[dict]:
        while True:
            yield self.episode()

    def eval_loader(self, split: str) -> Iterator[dict]:
        """Sample i on rank i % world, padded (mask False) to the same batch count per rank."""
        images, labels = self.evals[split]
        mine = torch.arange(self.rank, len(labels), self.world)
        per_rank = -(-len(labels) // self.world)
        n_batches = -(-per_rank // self.eval_batch_size)
        for b in range(n_batches):
            rows = mine[b * self.eval_batch_size:(b + 1) * self.eval_batch_size]
            size = min(self.eval_batch_size, per_rank - b * self.eval_batch_size)
            pad = size - len(rows)
            yield {"image": torch.cat([images[rows], images[:1].expand(pad, *images.shape[1:])]),
                   "labels": {"identity": torch.cat([labels[rows], torch.full((pad,), -1, dtype=labels.dtype)])},
                   "id": torch.cat([rows, torch.full((pad,), -1, dtype=torch.long)]),
                   "mask": torch.arange(size) < len(rows)}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
