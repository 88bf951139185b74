"""Build a run from a validated config: strategy → run directory → data → algorithm → trainer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.config import ConfigError, plugin_config
from framework.registry import ALGORITHMS, DATASETS, STRATEGIES

log = logging.getLogger("medley")


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("medley").setLevel(level)


def check_capabilities(cfg: DictConfig) -> None:
    """Fail before any process group starts when the algorithm does not support the setup,
    or when the launcher's settings disagree with the config (``strategies/launch.py``)."""
    from framework.algorithm import supported_strategies

    algo_cls = ALGORITHMS.get(cfg.algorithm.name).load()
    caps = algo_cls.capabilities
    name = cfg.algorithm.name
    excluded = supported_strategies(algo_cls, algo_cls(plugin_config(cfg.algorithm, ALGORITHMS), cfg))
    if cfg.strategy.name in excluded:
        raise ConfigError(f"strategy.name: algorithm '{name}' cannot run under strategy '{cfg.strategy.name}': "
                          f"{excluded[cfg.strategy.name]}; use strategy=ddp")
    if cfg.strategy.name not in caps.strategies:
        raise ConfigError(
            f"strategy.name: algorithm '{name}' does not support strategy '{cfg.strategy.name}' "
            f"(supported: {', '.join(caps.strategies)})"
        )
    if cfg.trainer.precision not in caps.precisions:
        raise ConfigError(
            f"trainer.precision: algorithm '{name}' does not support precision '{cfg.trainer.precision}' "
            f"(supported: {', '.join(caps.precisions)})"
        )
    if cfg.trainer.accumulate_grad_batches > 1 and not caps.accumulation:
        raise ConfigError(f"trainer.accumulate_grad_batches: algorithm '{name}' does not support accumulation")
    from framework.strategies.launch import check_launch

    check_launch(cfg)


def config_hash(cfg: Any) -> str:
    blob = json.dumps(cfg if isinstance(cfg, dict) else hashed_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def hashed_config(cfg: DictConfig) -> dict:
    """The resolved config every rank must agree on. ``paths.data_root`` may differ: nodes may keep
    their prepared data on local disks (it is checked by the shard manifest's sha256 instead)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.get("paths", {}).pop("data_root", None)
    return out


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return prefix.rstrip(".") if a != b else None


def check_same_config(cfg: DictConfig, strategy: Any) -> None:
    """Every rank composed its own config; prove they agree. Ranks exchange a hash; only when the
    hashes differ do they exchange whole configs, to name the first differing key."""
    if strategy.world_size == 1:
        return
    mine = hashed_config(cfg)
    hashes = strategy.all_gather_object(config_hash(mine))
    if len(set(hashes)) == 1:
        return
    everyone = strategy.all_gather_object(mine)
    for rank, other in enumerate(everyone):
        diff = first_difference(everyone[0], other)
        if diff:
            raise ConfigError(
                f"{diff}: rank {rank} composed {OmegaConf.select(OmegaConf.create(other), diff)!r}, rank 0 "
                f"{OmegaConf.select(OmegaConf.create(everyone[0]), diff)!r} (launch every rank with the same arguments)"
            )


def resolve_run_dir(cfg: DictConfig, strategy: Any) -> Path:
    """Explicit ``paths.run_dir``; else ``resume=auto`` continues the newest run of this name;
    else a new ``run_root/name/timestamp``. Decided on rank 0 and broadcast.

    A new directory is claimed with an exclusive ``mkdir``, so two runs of one name started in the
    same second get two directories. A run another live process still writes is refused by
    ``lock_run_dir`` (``resume=auto`` never continues it)."""
    if cfg.paths.run_dir:
        path = Path(cfg.paths.run_dir).expanduser().resolve()
    else:
        path = None
        if strategy.is_global_zero:
            base = Path(cfg.paths.run_root).expanduser().resolve() / cfg.name
            if cfg.resume == "auto" and base.is_dir():
                runs = sorted(p for p in base.iterdir() if (p / "checkpoints").is_dir())
                path = runs[-1] if runs else None
            if cfg.resume and cfg.resume != "auto" and Path(cfg.resume).exists():
                p = Path(cfg.resume).resolve()
                path = p if (p / "checkpoints").is_dir() else p.parent.parent
            if path is None:
                path = claim_new_run_dir(base)
        path = Path(strategy.broadcast_object(str(path) if path else None))
    if strategy.is_global_zero:
        path.mkdir(parents=True, exist_ok=True)
    strategy.barrier()
    return path


def claim_new_run_dir(base: Path) -> Path:
    """``base/YYYYmmdd-HHMMSS[-n]``, created here and by no one else (``mkdir`` fails if it exists)."""
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = base / stamp, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, n = base / f"{stamp}-{n}", n + 1


LOCK_NAME = ".run.lock"


def lock_run_dir(run_dir: Path) -> Any:
    """Hold an exclusive lock on ``run_dir/.run.lock`` for the life of the run (rank 0): the kernel
    drops it when the process ends, however it ends. Returns the open file (close it to release);
    raises RunInUseError when another live process holds it.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so forked
    DataLoader workers that outlive an interrupted run do not keep the directory locked."""
    import errno
    import fcntl

    handle = open(run_dir / LOCK_NAME, "a+")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            handle.close()
            raise
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise RunInUseError(f"run directory {run_dir} is being written by another live process (pid {owner}); "
                            f"wait for it to end, or start a new run (another name, or without resume)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class RunInUseError(RuntimeError):
    """Two processes would write one run directory."""


def build_strategy(cfg: DictConfig) -> Any:
    """The strategy named by ``strategy.name``; a distributed one starts (or joins) the process group."""
    caps = ALGORITHMS.get(cfg.algorithm.name).load().capabilities
    strategy_cls = STRATEGIES.get(cfg.strategy.name).load()
    return strategy_cls(plugin_config(cfg.strategy, STRATEGIES), capabilities=caps, run_config=cfg)


def train(cfg: DictConfig, hooks: list | None = None, strategy: Any = None) -> dict:
    """Run one training job from a validated config; returns the summary (also written to disk).
    SIGTERM stops it after the current step with a checkpoint (``framework.preemption``)."""
    from framework.preemption import Preemption, handle_sigterm

    check_capabilities(cfg)
    strategy = strategy or build_strategy(cfg)
    setup_logging(strategy.rank)
    check_same_config(cfg, strategy)
    run_dir = resolve_run_dir(cfg, strategy)  # config.yaml is written once the start is validated
    lock, refused = None, None
    if strategy.is_global_zero:
        try:
            lock = lock_run_dir(run_dir)
        except RunInUseError as exc:
            refused = str(exc)
    refused = strategy.broadcast_object(refused)  # every rank stops, not only rank 0
    if refused:
        raise RunInUseError(refused)
    try:
        if strategy.is_global_zero:
            log.info("run directory: %s", run_dir)
        preemption = Preemption(cfg.trainer.preempt_check_every)
        with handle_sigterm(preemption):
            summary = _fit(cfg, strategy, run_dir, [*(hooks or []), preemption])
    finally:
        if lock is not None:
            lock.close()
    return summary


def _fit(cfg: DictConfig, strategy: Any, run_dir: Path, hooks: list) -> dict:
    from framework.data.module import DataModule
    from framework.trainer import Trainer

    data_cfg = plugin_config(cfg.data, DATASETS)
    data = DataModule(data_cfg, cfg.paths.data_root, cfg.trainer.seed, strategy.rank, strategy.world_size)
    algo_cls = ALGORITHMS.get(cfg.algorithm.name).load()
    algorithm = algo_cls(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
    trainer = Trainer(cfg, strategy, algorithm, data, run_dir, hooks)
    summary = trainer.fit()
    summary["run_dir"] = str(run_dir)
    if strategy.is_global_zero:
        from framework.checkpoint import write_text_atomic

        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
        log.info("summary: %s", json.dumps(summary["final_metrics"]))
    strategy.barrier()
    return summary


def print_summary(summary: dict) -> None:
    """The final metrics as a table on stdout (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    print(f"\n{summary['algorithm']} on {summary['dataset']}: {summary['steps']} steps in {summary['wall_s']:.1f} s "
          f"({summary['strategy']}, world size {summary['world_size']})")
    for key, value in summary["final_metrics"].items():
        print(f"  {key:32s} {value:.4f}")
    print(f"run directory: {summary.get('run_dir')}")
