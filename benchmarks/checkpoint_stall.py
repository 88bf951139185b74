"""Checkpoint stall: the training time a checkpoint takes, as a share of the checkpoint interval.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_stall.py [--steps 150] [--every 50]

Trains the demo experiment from shards with ``trainer.ckpt_every=--every`` and records, through
trainer hooks, the wall time of every periodic checkpoint (``before_checkpoint`` →
``after_checkpoint``: gathering state, writing, fsync, rename, pruning) and of the training steps
between them. ``share`` = median stall / median interval; the same stall is also expressed
against the demo's own interval (``trainer.ckpt_every`` of ``experiment=demo``) at the measured
step time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import compose, save, table  # noqa: E402
from framework.hooks import Hook  # noqa: E402


class Stall(Hook):
    """Timestamps of checkpoints and steps."""

    def __init__(self) -> None:
        self.saves: list[float] = []
        self.steps: list[float] = []
        self._t = 0.0

    def before_step(self, trainer, step: int) -> None:
        self._t = time.perf_counter()

    def after_step(self, trainer, step: int, losses: dict) -> None:
        self.steps.append(time.perf_counter() - self._t)

    def before_checkpoint(self, trainer, step: int) -> None:
        self._c = time.perf_counter()

    def after_checkpoint(self, trainer, path) -> None:
        if trainer.ctx.global_step < trainer.plan.total:  # the final checkpoint ends the run: no interval
            self.saves.append(time.perf_counter() - self._c)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=50)
    ns = p.parse_args(argv)
    from framework.run import train

    demo = compose("experiment=demo")
    hook = Stall()
    run_dir = Path(tempfile.mkdtemp(prefix="medley-ckpt-")) / "run"
    train(compose("experiment=demo", f"trainer.max_steps={ns.steps}", f"trainer.ckpt_every={ns.every}",
                  "trainer.eval_every=0", f"paths.run_dir={run_dir}"), hooks=[hook])
    stall = statistics.median(hook.saves)
    step = statistics.median(hook.steps)
    share = stall / (stall + ns.every * step)
    demo_every = int(demo.trainer.ckpt_every)
    demo_share = stall / (stall + demo_every * step)
    size = sum(f.stat().st_size for f in (run_dir / "checkpoints").glob("step-*.pt")) / max(
        len(list((run_dir / "checkpoints").glob("step-*.pt"))), 1)
    headers = ["checkpoint", "stall ms (median)", "step ms (median)", f"share at every {ns.every}",
               f"share at demo's every {demo_every}", "file MiB"]
    rows = [[f"{len(hook.saves)} periodic", stall * 1e3, step * 1e3, share, demo_share, size / 2**20]]
    print(table(headers, rows))
    result = {"headers": headers, "rows": rows, "saves": hook.saves}
    save("checkpoint_stall", result)
    return result


if __name__ == "__main__":
    main()
