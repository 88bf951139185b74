"""DYMU's tiny training setting and its 2-process worker (``run_workers`` needs module-level functions)."""

from __future__ import annotations

import algorithms.dymu  # noqa: F401 - registers dymu (until its entry point is installed)

#: dense_scenes with 64 scenes per split, three streams of three small nodes, 4 + 4 + 8 + 8 steps
TINY = ["data=dense_scenes", "data.limit=64", "data.batch_size=8", "data.eval_batch_size=32",
        "model.widths=[4,8,8]", "algorithm=dymu", "algorithm.output_stride=4", "algorithm.affinity_samples=16",
        "algorithm.pretrain_share=0.1667", "algorithm.anchor_share=0.1667", "algorithm.edge_share=0.3333",
        "algorithm.edge_hidden=16", "algorithm.weight_hidden=16", "algorithm.embed_dim=8",
        "trainer.max_steps=24", "trainer.log_every=4", "logger.progress=off", "logger.tensorboard=false"]


def train_dymu(rank: int, world: int, data_root: str, overrides: list[str]) -> dict:
    """Train ``dymu`` in a process group; rank 0 returns its final weights, every rank a checksum."""
    from tests.helpers.dist_workers import cpu_only, train_weights

    cpu_only()
    out = train_weights(rank, world, data_root, [*TINY, *overrides])
    return out
