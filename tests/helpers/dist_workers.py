"""Worker functions for the multi-process tests (``run_workers`` needs module-level functions).

Every worker composes its config exactly as the CLI does, from the same overrides, and trains
with the real strategy in a real process group (gloo, CPU: ``cpu_only`` hides GPUs, so the
tests behave the same on a machine that has one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from framework.hooks import Hook

#: a small, fast run whose numerics can be compared across world sizes: GroupNorm (no batch
#: statistics), SGD, fp32, the same clipping, ``data.order=global`` (batch k = same sample ids)
PARITY = ["model.widths=[8,16]", "model.norm=group", "optim.name=sgd", "trainer.precision=fp32",
          "trainer.grad_clip=1.0", "trainer.max_steps=20", "data.order=global", "data.limit=512",
          "data.eval_batch_size=128", "logger.progress=off", "logger.tensorboard=false", "trainer.log_every=1"]


def cpu_only() -> None:
    """Before anything touches CUDA in this worker: the strategies then choose CPU and gloo."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def compose(data_root: str | Path, *overrides: str):
    """A validated config, composed from the same defaults and overrides as ``medley train``."""
    from framework.compose import compose as compose_config

    return compose_config([f"paths.data_root={data_root}", *overrides])


class FinalWeights(Hook):
    """Consolidated weights at the end of training (every rank takes part: ZeRO-3 gathers)."""

    def __init__(self):
        self.weights: dict[str, torch.Tensor] = {}
        self.initial: dict[str, torch.Tensor] = {}

    def before_fit(self, trainer: Any) -> None:
        self.initial = _copy(trainer.strategy.full_state_dict(trainer.model))

    def after_fit(self, trainer: Any, summary: dict) -> None:
        self.weights = _copy(trainer.strategy.full_state_dict(trainer.model))


def _copy(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def train_weights(rank: int, world: int, data_root: str, overrides: list[str]) -> dict:
    """Train once; rank 0 returns the final weights and the summary."""
    from framework.run import train

    hook = FinalWeights()
    summary = train(compose(data_root, *overrides), hooks=[hook])
    if rank != 0:
        return {}
    # numpy, not tensors: torch's queue would pass tensors as shared memory owned by this process,
    # which ends before the parent reads them
    return {"weights": _numpy(hook.weights), "initial": _numpy(hook.initial), "summary": summary}


def _numpy(state: dict) -> dict:
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}


def train_many(rank: int, world: int, data_root: str, runs: list[list[str]]) -> list[dict]:
    """Several runs, one after the other, in the same process group (saves process start-ups)."""
    cpu_only()
    return [train_weights(rank, world, data_root, overrides) for overrides in runs]


def rank_specific_config(rank: int, world: int, data_root: str, run_root: str) -> str:
    """Rank 1 composes a different learning rate: the run must fail before training, naming it."""
    cpu_only()
    from framework.config import ConfigError
    from framework.run import train

    overrides = [f"paths.run_root={run_root}", "strategy=ddp", "trainer.max_steps=2", "data.limit=256",
                 "model.widths=[8]", "logger.progress=off", "logger.tensorboard=false",
                 f"optim.lr={0.05 if rank == 0 else 0.07}"]
    try:
        train(compose(data_root, *overrides))
    except ConfigError as exc:
        return str(exc)
    return "trained"


def broadcast_run_dir(rank: int, world: int, data_root: str, run_root: str) -> dict:
    """No explicit run directory: rank 0 picks ``run_root/name/<timestamp>`` and broadcasts it.
    Also: DDP's ``find_unused_parameters`` follows the algorithm's capabilities."""
    cpu_only()
    from torch import nn

    from framework.algorithm import Algorithm, Capabilities
    from framework.run import train
    from framework.strategies.ddp import DDPStrategy

    overrides = [f"paths.run_root={run_root}", "strategy=ddp", "trainer.max_steps=2", "data.limit=256",
                 "model.widths=[8]", "logger.progress=off", "logger.tensorboard=false", "name=bcast"]
    run_dir = train(compose(data_root, *overrides))["run_dir"]
    flags = []
    for unused in (False, True):
        caps = Capabilities(find_unused_parameters=unused)
        wrapped, _ = DDPStrategy(capabilities=caps).setup(nn.Linear(2, 2), {}, Algorithm(None))
        flags.append(wrapped.find_unused_parameters)
    return {"run_dir": run_dir, "find_unused_parameters": flags}


def accelerate_sees_fewer_processes(rank: int, world: int) -> str:
    """The launcher claims 2 processes (WORLD_SIZE) while the process group has 1."""
    cpu_only()
    from framework.strategies.ddp import DDPStrategy

    os.environ["WORLD_SIZE"] = "2"
    try:
        DDPStrategy()
    except RuntimeError as exc:
        return str(exc)
    return "started"


# ------------------------------------------------------------------------ DeepSpeed checkpoints
DS_SMALL = ["strategy=deepspeed", "strategy.zero_stage=2", "data.limit=256", "data.batch_size=16",
            "data.eval_batch_size=128", "model.widths=[8]", "model.norm=group", "trainer.max_steps=8",
            "trainer.ckpt_every=4", "logger.progress=off", "logger.tensorboard=false"]


class StopAfterCheckpoint(Hook):
    """The process dies right after the checkpoint of ``step`` is committed."""

    def __init__(self, step: int):
        self.step = step

    def after_checkpoint(self, trainer: Any, path: Any) -> None:
        if trainer.ctx.global_step == self.step:
            raise KeyboardInterrupt


def deepspeed_interrupt_and_resume(rank: int, world: int, data_root: str, run_root: str) -> dict:
    """Uninterrupted run vs. a run killed after its step-4 checkpoint and resumed with resume=auto."""
    cpu_only()
    from framework.run import train

    full = FinalWeights()
    train(compose(data_root, *DS_SMALL, f"paths.run_dir={run_root}/full"), hooks=[full])
    try:
        train(compose(data_root, *DS_SMALL, f"paths.run_dir={run_root}/split"), hooks=[StopAfterCheckpoint(4)])
    except KeyboardInterrupt:
        pass
    ckpt_dir = Path(run_root) / "split" / "checkpoints"
    listing = sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*")) if rank == 0 else []
    resumed = FinalWeights()
    summary = train(compose(data_root, *DS_SMALL, f"paths.run_dir={run_root}/split", "resume=auto"),
                    hooks=[resumed])
    if rank != 0:
        return {}
    return {"full": _numpy(full.weights), "resumed": _numpy(resumed.weights), "summary": summary,
            "listing_after_interrupt": listing}


def deepspeed_resume_at_world_one(rank: int, world: int, data_root: str, checkpoint: str, run_root: str) -> dict:
    """Resume a 2-process checkpoint in 1 process: first as a full resume (must fail before
    training), then with ``resume_weights_only=true`` (must start from the saved weights)."""
    cpu_only()
    from framework.run import train

    out: dict = {}
    for weights_only in (False, True):
        hook = FinalWeights()
        overrides = [*DS_SMALL, "trainer.max_steps=2", f"resume={checkpoint}",
                     f"paths.run_dir={run_root}/weights_only_{str(weights_only).lower()}",
                     f"resume_weights_only={str(weights_only).lower()}"]
        try:
            summary = train(compose(data_root, *overrides), hooks=[hook])
            out[weights_only] = {"summary": summary, "initial": _numpy(hook.initial)}
        except ValueError as exc:
            out[weights_only] = {"error": str(exc)}
    return out
