"""Small cross-domain continual runs for the CDCL tests, and their 2-process worker."""

from __future__ import annotations

from typing import Any

import torch

from framework.hooks import Hook

#: five two-digit experiences on digit_domains (mnist_m held out), a few steps each
SMALL = ["experiment=cdcl_digits", "data.limit=256", "data.batch_size=32", "data.eval_batch_size=512",
         "data.verify=size", "model.widths=[8,16]", "algorithm.neck=32", "algorithm.msl_rank=8",
         "logger.progress=off", "logger.tensorboard=false", "trainer.log_every=1"]


class Losses(Hook):
    """Per-step losses and, at the end, the plain model's parameters and buffers."""

    def __init__(self):
        self.losses: list[dict] = []
        self.final: dict[str, torch.Tensor] = {}

    def after_step(self, trainer: Any, step: int, losses: dict) -> None:
        self.losses.append(dict(losses))

    def after_fit(self, trainer: Any, summary: dict) -> None:
        module = trainer.strategy.unwrap(trainer.model)
        self.final = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def ddp_interrupt_and_resume(rank: int, world: int, data_root: str, run_root: str, overrides: list[str]) -> dict:
    """An uninterrupted 2-process run, then one stopped after the checkpoint at ``trainer.ckpt_every``
    (inside an experience, after growth) and resumed with resume=auto; every rank returns its
    final state and per-step losses."""
    import algorithms.cdcl  # noqa: F401 - registers cdcl where the entry point is not installed
    from framework.run import train
    from tests.helpers.dist_workers import StopAfterCheckpoint, compose, cpu_only

    cpu_only()
    stop = int(next(o for o in overrides if o.startswith("trainer.ckpt_every=")).split("=")[1])
    full = Losses()
    train(compose(data_root, *overrides, f"paths.run_dir={run_root}/full"), hooks=[full])
    first, second = Losses(), Losses()
    try:
        train(compose(data_root, *overrides, f"paths.run_dir={run_root}/split"), hooks=[first, StopAfterCheckpoint(stop)])
    except KeyboardInterrupt:
        pass
    summary = train(compose(data_root, *overrides, f"paths.run_dir={run_root}/split", "resume=auto"), hooks=[second])
    return {"full_losses": full.losses, "split_losses": first.losses + second.losses, "summary": summary,
            "full": {k: v.numpy() for k, v in full.final.items()},
            "resumed": {k: v.numpy() for k, v in second.final.items()}}
