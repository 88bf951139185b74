"""``medley eval RUN_DIR|CHECKPOINT``: evaluate saved weights on a split, print a table, write JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf


def locate(target: str) -> tuple[Path, Path]:
    """(run_dir, checkpoint) from a run directory (newest checkpoint) or a checkpoint file."""
    from framework.checkpoint import latest

    path = Path(target).expanduser().resolve()
    if path.is_dir():
        ckpt = latest(path / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"{path}: no checkpoints/step-*.pt in this run directory")
        return path, ckpt
    if path.is_file():
        return path.parent.parent, path
    raise FileNotFoundError(f"{target}: no such run directory or checkpoint")


@contextlib.contextmanager
def loaded_checkpoint(target: str, overrides: list[str] | None = None):
    """A trainer whose model holds the checkpoint's weights (grown phases rebuilt first), built from
    the run's ``config.yaml`` plus ``overrides``; yields ``(trainer, checkpoint_path)``."""
    from framework.config import ConfigError, plugin_config, validate
    from framework.data.module import DataModule
    from framework.registry import ALGORITHMS, DATASETS
    from framework.run import build_strategy, setup_logging
    from framework.trainer import Trainer

    run_dir, ckpt = locate(target)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: missing; cannot rebuild the model of this checkpoint")
    cfg = OmegaConf.load(cfg_path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    try:
        cfg = validate(cfg)
    except ConfigError as exc:
        sys.exit(f"medley: config error: {exc}")
    strategy = build_strategy(cfg)
    try:
        setup_logging(strategy.rank)
        data = DataModule(plugin_config(cfg.data, DATASETS), cfg.paths.data_root, cfg.trainer.seed,
                          strategy.rank, strategy.world_size)
        algorithm = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
        trainer = Trainer(cfg, strategy, algorithm, data, run_dir=None)
        state = strategy.load(ckpt)
        trainer.rebuild_to_phase(state.get("phase_index", 0))  # a grown model before its weights load
        strategy.load_weights(trainer.model, state["model"])
        algorithm.load_state_dict(state.get("algorithm", {}))
        trainer.ctx.global_step = state.get("step", 0)
        yield trainer, ckpt
    finally:
        strategy.teardown()  # a run written under ddp evaluates in a process group of its own


def evaluate_checkpoint(target: str, splits: list[str], overrides: list[str] | None = None) -> dict[str, float]:
    with loaded_checkpoint(target, overrides) as (trainer, ckpt):
        results: dict[str, float] = {}
        for split in splits:
            results.update(trainer.evaluate(split))
        return {"checkpoint": str(ckpt), "step": trainer.ctx.global_step, "metrics": results}


def eval_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="medley eval")
    parser.add_argument("target", help="run directory (newest checkpoint) or checkpoint file")
    parser.add_argument("--split", action="append", help="split(s) to evaluate (default: test)")
    parser.add_argument("--out", help="JSON output (default: <run_dir>/eval.json)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.eval_batch_size=256")
    ns = parser.parse_intermixed_args(args)  # overrides may come before or after the options
    try:
        out = evaluate_checkpoint(ns.target, ns.split or ["test"], ns.overrides)
    except FileNotFoundError as exc:
        sys.exit(f"medley eval: {exc}")
    width = max(len(k) for k in out["metrics"]) if out["metrics"] else 10
    print(f"{'metric':{width}s}  value   (step {out['step']}, {out['checkpoint']})")
    for k, v in out["metrics"].items():
        print(f"{k:{width}s}  {v:.4f}")
    dest = Path(ns.out) if ns.out else locate(ns.target)[0] / "eval.json"
    dest.write_text(json.dumps(out, indent=1))
    print(f"wrote {dest}")
