"""A callback loaded by name from ``trainer.callbacks`` in the tests."""

from __future__ import annotations

import json

from framework.hooks import Hook


class CountPhases(Hook):
    """Counts the steps of each phase and writes them to the run directory at the end."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def after_step(self, trainer, step, losses):
        self.counts[trainer.ctx.phase] = self.counts.get(trainer.ctx.phase, 0) + 1

    def after_fit(self, trainer, summary):
        if trainer.run_dir is not None:
            (trainer.run_dir / "phase_counts.json").write_text(json.dumps(self.counts))
