"""Checkpoint files of a run: ``checkpoints/step-XXXXXXXX.pt`` (keep last K) and ``best.pt``.

A checkpoint is a plain dict of state_dicts (model, optimizers, schedulers, algorithm
state, data position and RNG per rank), loadable with ``torch.load(weights_only=True)``.
A sharding strategy (DeepSpeed) also writes a directory ``step-XXXXXXXX.ds/`` of per-rank
shards; its ``.pt`` file is then the pointer that makes the checkpoint visible, and it goes
when the pointer goes.

Every file is written under a hidden temporary name, fsynced and renamed into place, so a crash
or a full disk at any moment leaves the previous checkpoint as it was and no partial file under
a name ``resume=auto`` would pick. Loading accepts only Medley's own files and unpickles nothing
but tensors and plain containers.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP = re.compile(r"step-(\d+)\.pt$")
#: the keys every Medley checkpoint holds (``Trainer.state`` plus the strategy's model weights)
REQUIRED_KEYS = ("step", "model", "world_size")


class CheckpointError(ValueError):
    """A file that is not a readable Medley checkpoint, or one that names paths outside its directory."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint (or another run file) failed; the previous files are untouched."""


def load_file(path: Path) -> dict:
    """A Medley checkpoint file: ``weights_only`` (no object other than tensors and plain containers
    is ever unpickled) and checked to be Medley's before any field is used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign or damaged files
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path} is not a readable Medley checkpoint ({type(exc).__name__}: {first}); "
                              f"only files written by Medley load, and nothing but tensors and plain "
                              f"containers is unpickled") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a Medley checkpoint: it lacks {', '.join(missing)} "
                              f"(pass a checkpoints/step-N.pt file or a run directory)")
    return state


def inside(base: Path, name: str, what: str) -> Path:
    """``base/name`` where ``name`` is one plain entry of ``base`` (no separator, no ``..``): a file
    must not steer reads or writes outside its own directory."""
    if not name or name != Path(name).name or name in (".", "..") or "\\" in name:
        raise CheckpointError(f"{what}: '{name}' is not a plain name inside {base}; refused")
    return base / name


def save_atomic(state: dict, path: Path) -> None:
    """Temporary name, fsync, rename: a crash mid-save leaves the previous file untouched, and a
    failed write (a full disk) leaves no partial file and raises CheckpointWriteError naming it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        raise write_error(path, exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """A small run file (summary, config) written whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_error(path: Path, exc: BaseException) -> CheckpointWriteError:
    """A CheckpointWriteError naming ``path`` and the cause (torch wraps an OSError in a RuntimeError)."""
    cause, seen = exc, set()
    while cause is not None and not isinstance(cause, OSError) and id(cause) not in seen:
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    code = getattr(cause, "errno", None)
    reason = os.strerror(code) if code else str(exc).splitlines()[0]
    hint = " (disk full: free space there or set paths.run_root elsewhere)" if code in (errno.ENOSPC, errno.EDQUOT) else ""
    return CheckpointWriteError(code or errno.EIO, f"could not write {path}: {reason}{hint}; earlier files are "
                                f"untouched and no partial file was left; resume=auto continues from the "
                                f"last complete checkpoint")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
