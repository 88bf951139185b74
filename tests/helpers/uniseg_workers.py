"""Worker functions for UniSeg's multi-process tests (``run_workers`` needs module-level functions).

``data.order=global`` (batch k holds the same samples at any world size) serves datasets with one
training split; seg_label_shift mixes three sources. ``GlobalBatches`` gives the mixture the same
property for the parity test: every rank draws the one-process stream (batch B·W, world size 1,
the same seed) and keeps its own contiguous B rows. Evaluation and UniSeg's statistics pass still
read the rank's real loader, which deals every sample once across ranks.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import torch

from framework.data.module import DataModule


def rows(batch: Any, part: slice) -> Any:
    """The rows ``part`` of every tensor in a (nested) batch."""
    if torch.is_tensor(batch):
        return batch[part]
    if isinstance(batch, dict):
        return {k: rows(v, part) for k, v in batch.items()}
    return batch


class GlobalBatches(DataModule):
    """Training batches: rank r's slice of the world-size-1 stream; everything else as ``DataModule``."""

    def __init__(self, cfg: Any, data_root: Any, seed: int, rank: int = 0, world: int = 1):
        super().__init__(cfg, data_root, seed, rank, world)
        whole = dataclasses.replace(cfg, batch_size=cfg.batch_size * world)
        self.whole = DataModule(whole, data_root, seed, 0, 1) if world > 1 else None

    def epoch_batches(self):
        if self.whole is None:
            return super().epoch_batches()
        b = self.cfg.batch_size
        return (rows(batch, slice(self.rank * b, (self.rank + 1) * b)) for batch in self.whole.epoch_batches())


def train_global_batches(rank: int, world: int, data_root: str, overrides: list[str]) -> dict:
    """Train UniSeg with ``GlobalBatches``; rank 0 returns the final weights and the summary."""
    from tests.helpers.dist_workers import cpu_only, train_weights

    cpu_only()
    import algorithms.uniseg  # noqa: F401 - registers uniseg
    from framework.data import module

    module.DataModule = GlobalBatches
    return train_weights(rank, world, data_root, overrides)


def uneven_void_gradients(rank: int, world: int) -> dict:
    """Each rank holds half of a batch whose void pixels sit mostly on rank 0; the loss is normalised by
    ``labelled_per_rank`` and the gradient of a shared parameter averaged over ranks, as DDP does.
    Returns that gradient and the one-process gradient of the whole batch."""
    import torch.distributed as dist

    from algorithms.uniseg.losses import bce_masked
    from algorithms.uniseg.method import labelled_per_rank

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(4, 5, 3, 3, generator=gen)
    target = torch.randint(0, 5, (4, 3, 3), generator=gen)
    target[:2, :, :2] = -1  # rank 0's images: 6 of 9 pixels void each; rank 1's: none
    mask = torch.ones(4, 5, dtype=torch.bool)

    def grad(x: torch.Tensor, t: torch.Tensor, ctx: Any) -> torch.Tensor:
        weight = torch.linspace(0.5, 1.5, 5).requires_grad_(True)  # the shared parameter: a scale per class
        bce_masked(x * weight[None, :, None, None], t, mask[: len(t)], labelled_per_rank(t, ctx)).backward()
        return weight.grad

    ctx = SimpleNamespace(world_size=world, all_reduce=lambda t, op: (dist.all_reduce(t), t)[1])
    part = slice(rank * 2, rank * 2 + 2)
    averaged = grad(features[part], target[part], ctx)
    dist.all_reduce(averaged)
    averaged /= world
    local = grad(features[part], target[part], SimpleNamespace(world_size=1))  # this rank's own mean
    dist.all_reduce(local)
    single = grad(features, target, SimpleNamespace(world_size=1))
    return {"ddp": averaged.numpy(), "local_mean": (local / world).numpy(), "single": single.numpy()}
