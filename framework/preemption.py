"""Preemption: on SIGTERM finish the current step, checkpoint on every rank, exit with a known code.

A cluster scheduler announces preemption with SIGTERM and kills the job a grace period later.
The signal handler only sets a flag; the ``Preemption`` hook reads it after each step. In a
process group the ranks agree every ``trainer.preempt_check_every`` steps with one all-reduce of
one number (the signal may reach one rank, or reach the ranks at different steps), so no
collective is added to the other steps. All ranks then write the checkpoint together and raise
``Preempted``; the launcher exits with ``PREEMPTED_EXIT_CODE`` and ``resume=auto`` continues
at the step after the one that finished.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterator

from framework.hooks import Hook

log = logging.getLogger("medley")

#: the exit status of a run stopped by SIGTERM after writing its checkpoint (75 = EX_TEMPFAIL:
#: "try again later"), distinct from success (0), a failure (1) and a config error (1, with a message)
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Raised on every rank after the preemption checkpoint is written."""

    def __init__(self, step: int, path: Any):
        super().__init__(f"preempted (SIGTERM): stopped after step {step}, checkpoint {path}; "
                         f"continue with resume=auto")
        self.step, self.path = step, path


class Preemption(Hook):
    """Reads the SIGTERM flag after each step (see the module docstring)."""

    def __init__(self, check_every: int = 10):
        self.check_every = max(1, int(check_every))
        self.requested = threading.Event()

    def request(self, *_: Any) -> None:
        self.requested.set()

    def after_step(self, trainer: Any, step: int, losses: dict) -> None:
        strategy = trainer.strategy
        if strategy.world_size == 1:
            stop = self.requested.is_set()
        elif step % self.check_every == 0:
            import torch

            flag = torch.tensor([1.0 if self.requested.is_set() else 0.0])
            stop = bool(strategy.all_reduce(flag, "max").item() > 0)
        else:
            return
        if not stop:
            return
        if strategy.is_global_zero:
            log.warning("SIGTERM: step %d finished, writing the preemption checkpoint", step)
        path = trainer.save_checkpoint()
        raise Preempted(step, path)


@contextlib.contextmanager
def handle_sigterm(hook: Preemption) -> Iterator[None]:
    """Route SIGTERM to ``hook`` for the duration of the block (main thread only: elsewhere, e.g.
    in a Ray Train worker thread, signals belong to the host process and nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, hook.request)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
