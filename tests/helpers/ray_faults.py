"""A test-only hook for ``launchers.ray_job --hook``: a worker dies in the middle of a run.

Configured by environment variables (not config keys): rank ``MEDLEY_TEST_KILL_RANK`` (default
1) calls ``os._exit(1)`` right after optimizer step ``MEDLEY_TEST_KILL_STEP``, once: the marker
file ``MEDLEY_TEST_KILL_MARKER`` records the kill so the restarted worker group runs through.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from framework.hooks import Hook


class KillWorkerOnce(Hook):
    def after_step(self, trainer: Any, step: int, losses: dict) -> None:
        if step != int(os.environ["MEDLEY_TEST_KILL_STEP"]):
            return
        if trainer.strategy.rank != int(os.environ.get("MEDLEY_TEST_KILL_RANK", "1")):
            return
        marker = Path(os.environ["MEDLEY_TEST_KILL_MARKER"])
        if marker.exists():
            return
        marker.write_text(f"rank {trainer.strategy.rank} killed after step {step}\n")
        os._exit(1)
