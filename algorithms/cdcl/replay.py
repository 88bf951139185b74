"""Experience replay: a reservoir of past training rows, the same on every rank.

Each step's rows are gathered from all ranks and offered to the reservoir in rank order with a
generator seeded by the step, so every rank keeps the same buffer and the checkpoint (written by
rank 0) restores every rank's. The rows replayed with a step are drawn per rank.
"""

from __future__ import annotations

import torch


class Reservoir:
    def __init__(self, capacity: int, seed: int):
        self.capacity, self.seed = capacity, seed
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.seen = 0  # rows offered so far

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    @torch.no_grad()
    def add(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        """Reservoir sampling: row n (0-based) of the stream is kept with probability capacity/(n+1)."""
        images, labels = images.detach().cpu(), labels.detach().cpu()
        if self.images is None:
            self.images = images.new_zeros((0, *images.shape[1:]))
            self.labels = labels.new_zeros((0,))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        for i in range(len(labels)):
            if len(self) < self.capacity:
                self.images = torch.cat([self.images, images[i : i + 1]])
                self.labels = torch.cat([self.labels, labels[i : i + 1]])
            else:
                j = int(torch.randint(self.seen + 1, (1,), generator=gen))
                if j < self.capacity:
                    self.images[j], self.labels[j] = images[i], labels[i]
            self.seen += 1

    def sample(self, n: int, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1009 + rank + 1)
        idx = torch.randint(len(self), (min(n, len(self)),), generator=gen)
        return self.images[idx], self.labels[idx]

    def state_dict(self) -> dict:
        return {"images": self.images, "labels": self.labels, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.images, self.labels, self.seen = state["images"], state["labels"], int(state["seen"])


def gather_rows(x: torch.Tensor, ctx) -> torch.Tensor:
    """Rows of every rank, in rank order (every rank passes the same number of rows)."""
    if ctx.world_size == 1:
        return x
    out = x.new_zeros((ctx.world_size, *x.shape))
    out[ctx.rank] = x
    return ctx.all_reduce(out, "sum").flatten(0, 1)
