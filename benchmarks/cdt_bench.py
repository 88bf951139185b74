"""Shared by the CDT benchmarks (``cdt_mechanism.py``, ``cdt_faces.py``): one run of the real
``cdt`` plugin through the real trainer on an in-memory episodic data module, and the table
formatting. It lives beside the benchmarks, not in the plugin: driving the trainer by hand is a
benchmark's business; a plugin reaches the engine only through the plugin API.

Each run builds the full ``TrainConfig`` (the schema ``medley train`` validates), the ``CDT``
algorithm and ``Trainer`` with the single-process strategy; the run directory is temporary and
its ``metrics.jsonl`` (the run-output contract) supplies the logged CDT diagnostics.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from algorithms.cdt import CDTConfig
from algorithms.cdt.method import CDT
from framework.config import ModelConfig, TrainConfig
from framework.strategies.single import SingleDeviceStrategy
from framework.trainer import Trainer

DIAGNOSTICS = ("hinge_active", "d2_pos", "d2_neg")


def diagnostics(run_dir: Path, after_steps: int) -> dict[str, float]:
    """Mean of the logged CDT diagnostics over the log windows ending after ``after_steps``."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for key in DIAGNOSTICS:
        values = [r[f"train/cdt/{key}"] for r in rows if r["step"] > after_steps and f"train/cdt/{key}" in r]
        out[key] = statistics.fmean(values) if values else math.nan
    return out


def make_config(algorithm: dict, model: dict, trainer: dict, optim: dict, data_name: str) -> Any:
    cfg = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(cfg, False)
    cfg.algorithm = OmegaConf.structured(CDTConfig(**algorithm))
    cfg.data = {"name": data_name}
    cfg.strategy = {"name": "single", "device": "cpu"}
    cfg.model = OmegaConf.merge(OmegaConf.structured(ModelConfig), model)
    cfg.trainer = OmegaConf.merge(cfg.trainer, {"eval_split": "test", "log_every": 25, **trainer})
    cfg.optim = OmegaConf.merge(cfg.optim, optim)
    cfg.logger = OmegaConf.merge(cfg.logger, {"tensorboard": False, "progress": "off"})
    cfg.name = f"{data_name}-{algorithm.get('mode', 'meta')}"
    return cfg


def run_once(cfg: Any, data: Any, after_steps: int = 100) -> dict[str, float]:
    """Train and evaluate once; returns the final test metrics, the wall time and the mean CDT
    diagnostics over the log windows that end after ``after_steps``."""
    algorithm = CDT(OmegaConf.to_object(cfg.algorithm), cfg)
    with tempfile.TemporaryDirectory(prefix="cdt-bench-") as tmp:
        trainer = Trainer(cfg, SingleDeviceStrategy(cfg.strategy), algorithm, data, Path(tmp))
        summary = trainer.fit()
        out = {k.split("/")[-1]: v for k, v in summary["final_metrics"].items() if k.startswith("test/")}
        out.update(wall_s=summary["wall_s"], **diagnostics(Path(tmp), after_steps))
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(diffs: list[float]) -> dict[str, float]:
    """Paired statistics of per-(fold, seed) differences: mean, std, the paired t statistic with
    its two-sided p value (Student's t, n − 1 degrees of freedom) and how many are positive."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    t = float(d.mean() / (sd / math.sqrt(n))) if n > 1 and sd > 0 else math.nan
    p = float(2 * stats.t.sf(abs(t), n - 1)) if not math.isnan(t) else math.nan
    return {"mean": float(d.mean()) if n else math.nan, "std": sd, "t": t, "p": p, "wins": int((d > 0).sum()),
            "n": n}


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
