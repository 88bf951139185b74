"""Weighted mixing of several training sources, each with its own checkpointed position.

Step ``t`` draws its composition from a generator seeded by ``(seed, t)`` alone, so every
rank makes the same choice and a resumed run the same choices, with no RNG state to save:

* ``mix_unit=batch``: the whole batch comes from one source, chosen with probability
  proportional to its weight;
* ``mix_unit=sample``: the batch's rows are split over the sources by a multinomial draw
  with those probabilities, then permuted (every batch then usually holds every task).

Each source is a ``SourceCursor`` in ``rows`` mode with its own epochs; its rows are taken
first-in first-out, so the rows used are always a prefix of what it delivered and the saved
position counts exactly the rows used (buffered leftovers are read again after a resume).
Sources are infinite, so every rank runs the same number of steps by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from framework.data.cursor import SourceCursor
from framework.data.loader import concat_batches, finalize, take_rows, to_tensors


class RowBuffer:
    """First-in first-out rows of one source."""

    def __init__(self, cursor: SourceCursor):
        self.cursor = cursor
        self._it: Iterator[dict] | None = None
        self.head: dict | None = None  # the part of the last pulled batch not used yet
        self.meta: tuple[int, list[int]] = (0, [])  # its worker and rows' raw positions

    def take(self, k: int) -> list[dict]:
        parts: list[dict] = []
        while k > 0:
            if self.head is None:
                if self._it is None:
                    self._it = self.cursor.batches()
                item = next(self._it)
                self.meta = (item["_worker"], list(item["_pos"]))
                self.head = to_tensors({key: v for key, v in item.items() if not key.startswith("_")})
            n = len(self.meta[1])
            used = min(k, n)
            parts.append(take_rows(self.head, slice(0, used)))
            if used == n:
                self.head, self.meta = None, (0, [])
            else:
                self.head = take_rows(self.head, slice(used, n))
                self.meta = (self.meta[0], self.meta[1][used:])
            k -= used
        return parts

    def state_dict(self) -> dict[str, Any]:
        state = self.cursor.state_dict()
        worker, left = self.meta
        if left:  # unused rows of the last batch: not consumed
            state["consumed"][worker] = left[0]
            state["delivered"][worker] -= len(left)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state)
        self._it, self.head, self.meta = None, None, (0, [])


class MixedStream:
    def __init__(
        self, buffers: dict[str, RowBuffer], weights: dict[str, float], batch_size: int, unit: str, seed: int
    ):
        if unit not in ("batch", "sample"):
            raise ValueError(f"data.mix_unit: '{unit}' is not one of batch, sample")
        self.buffers, self.batch_size, self.unit, self.seed = buffers, batch_size, unit, seed
        self.weights = dict(weights)
        self.active = list(buffers)
        self.step = 0

    def set_active(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.buffers]
        if unknown or not names:
            raise ValueError(f"mixing: unknown or empty source list {names} (have {list(self.buffers)})")
        self.active = list(names)

    def composition(self, step: int) -> dict[str, int]:
        """Rows per active source at ``step`` (a pure function of seed, step and weights)."""
        names = self.active
        p = np.array([self.weights[n] for n in names], dtype=np.float64)
        p = p / p.sum()
        rng = np.random.default_rng([self.seed, step, 0x6D6978])
        if self.unit == "batch":
            return {names[int(rng.choice(len(names), p=p))]: self.batch_size}
        counts = rng.multinomial(self.batch_size, p)
        return {n: int(c) for n, c in zip(names, counts) if c}

    def __iter__(self) -> Iterator[dict]:
        while True:
            parts = []
            for name, k in self.composition(self.step).items():
                parts += self.buffers[name].take(k)
            batch = concat_batches(parts)
            if self.unit == "sample" and len(parts) > 1:
                gen = torch.Generator().manual_seed(hash((self.seed, self.step)) % 2**63)
                batch = take_rows(batch, torch.randperm(self.batch_size, generator=gen))
            self.step += 1
            yield finalize(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "active": list(self.active),
            "sources": {n: b.state_dict() for n, b in self.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.active = list(state["active"])
        for name, s in state["sources"].items():
            self.buffers[name].load_state_dict(s)
