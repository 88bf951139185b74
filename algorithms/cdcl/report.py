"""Continual metrics at the end of a run: ``continual.json`` in the run directory, the scalars
in ``summary.json``'s ``final_metrics`` (``continual/{seen,heldout,unseen}/...``) and the log."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

from framework.hooks import Hook
from framework.metrics.continual import flat, summarize

log = logging.getLogger("medley")

class ContinualReport(Hook):
    def __init__(self, groups: Callable[[], dict[str, tuple[str, str]]]):
        self.groups = groups  # group -> (set pattern, metric pattern): see framework.metrics.continual

    def after_fit(self, trainer, summary: dict) -> None:
        doc = {"phases": [p.name for p in trainer.plan.phases if p.name in trainer.matrix.rows],
               "matrix": trainer.matrix.state_dict()}
        result = summarize(doc, self.groups())
        scalars = flat(result)
        summary["final_metrics"].update(scalars)
        if trainer.run_dir is not None and trainer.strategy.is_global_zero:
            tmp = trainer.run_dir / "continual.json.tmp"
            tmp.write_text(json.dumps(result, indent=1))
            os.replace(tmp, trainer.run_dir / "continual.json")
            log.info("continual: %s", "  ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
