"""Faults injected into a real training process, loaded as a trainer callback
(``trainer.callbacks=[tests.helpers.reliability_faults:Faults]``) and driven by the environment,
so every rank of a real launch runs the same code and only the chosen rank is hit:

* ``MEDLEY_FAULT_IO_ARM=K``: during the K-th checkpoint save, every I/O call of the checkpoint
  path (``torch.save``, each write into a checkpoint file, ``fsync``, ``replace``/``rename``,
  ``unlink``, ``rmtree``, then ``end`` once the save returned) is an event, appended to
  ``events<rank>.txt``; with ``MEDLEY_FAULT_IO_AT=KIND:N`` (``any:N`` = the N-th event of any
  kind) the process SIGKILLs itself just before that event on rank ``MEDLEY_FAULT_RANK``.
  Before the save, ``before.json`` gets the sha256 of every checkpoint file (rank 0).
* ``MEDLEY_FAULT_KILL_STEP=S``: SIGKILL rank ``MEDLEY_FAULT_RANK`` after step S, once (a marker
  file keeps a restarted group from dying again).
* ``MEDLEY_FAULT_SLEEP=SECONDS``: every step lasts at least that long (time to signal mid-step).
* ``MEDLEY_FAULT_HOLD_STEP=S``: after step S rank 0 waits until ``release`` exists in the fault
  directory (a run kept live while a test races another against it).
* ``MEDLEY_FAULT_BATCHES=1``: the sha256 of every batch, per rank and step, in ``batches<rank>.jsonl``.

Every rank appends the steps it finished to ``steps<rank>.txt``. Files go to ``MEDLEY_FAULT_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from framework.hooks import Hook


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: the signal cannot be caught


class _IOFaults:
    """Counts the checkpoint path's I/O calls while armed; dies before the selected one."""

    def __init__(self, trace: Path, selector: str | None):
        self.trace = open(trace, "a")
        self.kind, self.index = (selector.split(":") if selector else (None, "0"))
        self.index = int(self.index)
        self.total, self.counts, self.saved = 0, {}, {}

    def event(self, kind: str, detail: str) -> None:
        self.total += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.trace.write(f"{self.total} {kind} {detail}\n")
        self.trace.flush()
        hit = (self.kind == "any" and self.total == self.index) or (self.kind == kind and self.counts[kind] == self.index)
        if hit:
            _die()

    def arm(self) -> None:
        import torch

        ev = self.event
        real = {"save": torch.save, "fsync": os.fsync, "replace": os.replace, "rename": os.rename,
                "unlink": os.unlink, "remove": os.remove, "rmtree": shutil.rmtree}
        self.saved = real

        class Writer:
            def __init__(self, f: Any, name: str):
                self.f, self.name = f, name

            def write(self, data: bytes) -> int:
                ev("write", self.name)
                return self.f.write(data)

            def flush(self) -> None:
                self.f.flush()

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            name = Path(str(getattr(f, "name", f))).name
            ev("torch.save", name)
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as handle:
                    return real["save"](obj, Writer(handle, name), *args, **kwargs)
            return real["save"](obj, Writer(f, name), *args, **kwargs)

        def wrap(key: str, kind: str):
            def call(*args: Any, **kwargs: Any) -> Any:
                ev(kind, " ".join(Path(str(a)).name for a in args[:2] if isinstance(a, (str, os.PathLike))))
                return real[key](*args, **kwargs)
            return call

        torch.save = save
        os.fsync, os.replace, os.rename = wrap("fsync", "fsync"), wrap("replace", "replace"), wrap("rename", "replace")
        os.unlink, os.remove, shutil.rmtree = wrap("unlink", "unlink"), wrap("remove", "unlink"), wrap("rmtree", "rmtree")
        shutil.rmtree.avoids_symlink_attacks = True

    def disarm(self) -> None:
        import torch

        real = self.saved
        torch.save = real["save"]
        os.fsync, os.replace, os.rename = real["fsync"], real["replace"], real["rename"]
        os.unlink, os.remove, shutil.rmtree = real["unlink"], real["remove"], real["rmtree"]


class Faults(Hook):
    def __init__(self):
        env = os.environ
        self.dir = Path(env.get("MEDLEY_FAULT_DIR", "."))
        self.victim = int(env.get("MEDLEY_FAULT_RANK", "0"))
        self.arm_at = int(env.get("MEDLEY_FAULT_IO_ARM", "0"))
        self.selector = env.get("MEDLEY_FAULT_IO_AT") or None
        self.kill_step = int(env.get("MEDLEY_FAULT_KILL_STEP", "0"))
        self.sleep = float(env.get("MEDLEY_FAULT_SLEEP", "0"))
        self.batches = env.get("MEDLEY_FAULT_BATCHES") == "1"
        self.hold_step = int(env.get("MEDLEY_FAULT_HOLD_STEP", "0"))
        self.saves = 0
        self.rank = 0

    def before_fit(self, trainer: Any) -> None:
        self.rank = trainer.strategy.rank
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.arm_at:
            original = trainer.save_checkpoint

            def save_checkpoint() -> Any:
                self.saves += 1
                if self.saves != self.arm_at:
                    return original()
                return self._armed_save(trainer, original)

            trainer.save_checkpoint = save_checkpoint
        if self.batches:
            self._record_batches(trainer)

    def _armed_save(self, trainer: Any, original: Any) -> Any:
        from tests.helpers.reliability import sha256_tree

        if self.rank == 0:
            before = sha256_tree(trainer.run_dir / "checkpoints")
            (self.dir / "before.json").write_text(json.dumps(before))
        trainer.strategy.barrier()
        selector = self.selector if self.rank == self.victim else None
        io = _IOFaults(self.dir / f"events{self.rank}.txt", selector)
        io.arm()
        try:
            out = original()
        finally:
            io.disarm()
        io.event("end", "")
        return out

    def _record_batches(self, trainer: Any) -> None:
        import framework.trainer as module

        real, out = module.to_device, open(self.dir / f"batches{self.rank}.jsonl", "a")

        def to_device(batch: Any, device: Any) -> Any:
            digest = hashlib.sha256()
            _feed(digest, batch)
            out.write(json.dumps({"step": trainer.ctx.global_step + 1, "sha": digest.hexdigest()}) + "\n")
            out.flush()
            return real(batch, device)

        module.to_device = to_device

    def after_step(self, trainer: Any, step: int, losses: dict) -> None:
        with open(self.dir / f"steps{self.rank}.txt", "a") as f:
            f.write(f"{step}\n")
        if self.sleep:
            time.sleep(self.sleep)
        if self.hold_step and step == self.hold_step and self.rank == 0:
            (self.dir / "holding").write_text(str(step))
            while not (self.dir / "release").exists():
                time.sleep(0.05)
        if self.kill_step and step == self.kill_step and self.rank == self.victim:
            marker = self.dir / "killed"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                _die()


def _feed(digest: Any, value: Any) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            digest.update(str(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _feed(digest, item)
    else:
        digest.update(repr(value).encode())
