"""The pairwise-transfer table behind ``relation: pairwise``: short single- and two-task runs.

For T tasks: T single-task runs and T(T-1)/2 two-task hard-sharing runs, each task with the
same per-task batch. On multi-source data a run reads only its tasks' sources (equal mixing
weights), so a two-task step holds the same number of samples per task as a single-task step.
The table stores every run's metric (per seed when run with several); ``relation.pairwise_relation``
turns it into R with the configured ``pairwise_eps`` and ``pairwise_z``: with several seeds a
pair counts as hurting only when the drop exceeds eps plus z standard errors of the per-seed
differences, so one unlucky run does not cut a task off.

Every run goes through the public engine API (``framework.compose.compose`` and
``framework.run.train``), exactly as ``medley train`` would run it. The command is registered
through the ``medley.commands`` entry point::

    medley gradsplit-relations --out relations.json --steps 300 data=multi_source
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from algorithms.gradsplit.relation import pair_key, pairwise_relation
from framework.compose import compose

log = logging.getLogger("medley")


def task_sources(cfg: Any) -> tuple[list[str], dict[str, str]]:
    """(tasks, task -> training source) of the configured dataset (prepared on first use)."""
    from framework.config import plugin_config
    from framework.data.module import prepare, prepared_dir
    from framework.data.shards import read_manifest
    from framework.registry import DATASETS

    data_cfg = plugin_config(cfg.data, DATASETS)
    manifest = read_manifest(prepare(data_cfg, prepared_dir(data_cfg, cfg.paths.data_root)))
    sources = {s["task"]: name for name, s in manifest.get("sources", {}).items()}
    return list(manifest["tasks"]), sources


def run_config(
    base: Sequence[str], tasks: Sequence[str], sources: dict[str, str], per_task_batch: int, name: str
) -> Any:
    """One table run: GradSplit with R = all-ones (plain sharing) on ``tasks`` only; on
    multi-source data it reads only those tasks' sources, mixed equally."""
    from omegaconf import OmegaConf

    overrides = [
        "algorithm=gradsplit",
        "algorithm.relation=all_ones",
        f"algorithm.tasks=[{','.join(tasks)}]",
        f"name={name}",
    ]
    if all(t in sources for t in tasks):
        overrides.append(f"data.batch_size={per_task_batch * len(tasks)}")
    cfg = compose(list(base) + overrides)
    if all(
        t in sources for t in tasks
    ):  # set after composing: a structured dict cannot be emptied by override
        OmegaConf.update(cfg, "data.train_sources", [sources[t] for t in tasks], merge=False)
        OmegaConf.update(cfg, "data.mix_weights", {sources[t]: 1.0 for t in tasks}, merge=False)
    return cfg


def build_table(
    base: Sequence[str],
    steps: int,
    split: str = "val",
    eps: float = 0.0,
    train_fn: Callable[[Any], dict] | None = None,
    seeds: Sequence[int] = (0,),
    z: float = 0.0,
) -> dict:
    """Run the T + T(T-1)/2 short runs once per seed and return the table (metric:
    ``{split}/{task}/acc``; a list over ``seeds`` when there are several, paired by position)."""
    from framework.run import train

    train_fn = train_fn or train
    base = list(base) + [f"trainer.max_steps={steps}", f"trainer.eval_split={split}"]
    cfg0 = compose(base)
    tasks, sources = task_sources(cfg0)
    per_task = max(1, cfg0.data.batch_size // len(tasks))
    metric = lambda summary, t: summary["final_metrics"][f"{split}/{t}/acc"]
    table: dict[str, Any] = {
        "tasks": tasks,
        "metric": f"{split}/<task>/acc",
        "steps": steps,
        "per_task_batch": per_task,
        "seeds": list(seeds),
        "single": {},
        "pair": {},
    }
    t0 = time.time()
    for seed in seeds:
        seeded = base + [f"trainer.seed={seed}"]
        for t in tasks:
            summary = train_fn(run_config(seeded, [t], sources, per_task, f"gs_pairwise_{t}"))
            table["single"].setdefault(t, []).append(metric(summary, t))
        for i, j in itertools.combinations(tasks, 2):
            summary = train_fn(run_config(seeded, [i, j], sources, per_task, f"gs_pairwise_{i}_{j}"))
            for t in (i, j):
                table["pair"].setdefault(pair_key(i, j), {}).setdefault(t, []).append(metric(summary, t))
    if len(seeds) == 1:  # one seed: plain numbers, as older tables
        table["single"] = {t: v[0] for t, v in table["single"].items()}
        table["pair"] = {k: {t: v[0] for t, v in p.items()} for k, p in table["pair"].items()}
    table["eps"], table["z"] = eps, z
    table["relation"] = pairwise_relation(table, tasks, eps, z).int().tolist()
    table["wall_s"] = round(time.time() - t0, 1)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """``medley gradsplit-relations [--out FILE] [--steps N] [--eps E] [overrides ...]``."""
    parser = argparse.ArgumentParser(
        prog="medley gradsplit-relations",
        description="pairwise-transfer table for algorithm.relation=pairwise",
    )
    parser.add_argument("--out", default="gradsplit_relations.json")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every short run")
    parser.add_argument("--split", default="val", help="split whose accuracy the rule compares")
    parser.add_argument("--eps", type=float, default=0.0, help="tolerance recorded with the table")
    parser.add_argument("--seeds", type=int, default=1, help="runs of every table entry (seeds 0..n-1)")
    parser.add_argument(
        "--z", type=float, default=1.0, help="standard errors a drop must exceed (several seeds)"
    )
    ns, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    table = build_table(overrides, ns.steps, ns.split, ns.eps, seeds=range(ns.seeds), z=ns.z)
    Path(ns.out).write_text(json.dumps(table, indent=1))
    print(f"relation (rows = groups, columns = tasks {table['tasks']}): {table['relation']}")
    print(
        f"wrote {ns.out}; use: algorithm=gradsplit algorithm.relation=pairwise algorithm.relation_file={ns.out}"
    )


if __name__ == "__main__":
    main()
