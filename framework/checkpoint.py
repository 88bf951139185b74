"""Checkpoint files of a run: ``checkpoints/step-XXXXXXXX.pt`` (keep last K) and ``best.pt``.

A checkpoint is a plain dict of state_dicts (model, optimizers, schedulers, algorithm
state, data position and RNG per rank), loadable with ``torch.load(weights_only=True)``.
A sharding strategy (DeepSpeed) also writes a directory ``step-XXXXXXXX.ds/`` of per-rank
shards; its ``.pt`` file is then the pointer that makes the checkpoint visible, and it goes
when the pointer goes.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP = re.compile(r"step-(\d+)\.pt$")


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if _STEP.search(p.name)]
    return sorted(found, key=lambda p: int(_STEP.search(p.name).group(1)))


def latest(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints; drop shard directories nothing points to."""
    for old in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    if not ckpt_dir.is_dir():
        return
    for shards in ckpt_dir.glob("*.ds"):
        if shards.is_dir() and not shards.with_suffix(".pt").exists():
            shutil.rmtree(shards, ignore_errors=True)


def resolve_resume(resume: str | None, run_dir: Path | None) -> Path | None:
    """``auto`` → newest checkpoint in ``run_dir`` (None when there is none); a PATH must exist."""
    if not resume:
        return None
    if resume == "auto":
        return latest(run_dir / "checkpoints") if run_dir else None
    path = Path(resume).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint or run directory")
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = latest(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"resume={resume}: the run directory has no checkpoint")
        return found
    return path


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_py, np_state[2:])],
        "python": _py(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _py(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_py(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
