"""GradSplit against its baselines on multi-source data with a competing task.

Every run goes through the normal config path (``data=multi_source`` composed like
``medley train``). Steps:

1. the pairwise-transfer table (T single-task + T(T-1)/2 two-task short runs) -> R;
2. for every seed: single-task (one network per task, trained on its own source), equal-weight
   hard sharing, GradSplit with the pairwise R (task-wise BatchNorm ``chunk``, and ``cut``), with
   R = I and with R = all-ones (hard sharing plus the task-wise BatchNorm only), PCGrad, and
   task-specific last stages (``--ablations``: also R = all-ones, i.e. hard sharing plus the
   task-wise BatchNorm alone);
3. test accuracy per task (mean ± std over seeds), Δm relative to single-task, accuracy on the
   cross-dataset split, and inference parameters / FLOPs / peak activation memory;
4. step time: interleaved A/B medians after warm-up on one fixed batch, ratio to equal-weight.

    OMP_NUM_THREADS=1 python benchmarks/gradsplit_mtl.py            # full (5 seeds)
    OMP_NUM_THREADS=1 python benchmarks/gradsplit_mtl.py --quick    # make demo-gradsplit
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algorithms.gradsplit.pairwise import build_table, run_config, task_sources
from algorithms.gradsplit.report import delta_m, fmt, markdown_table, mean_std
from framework.compose import compose
from framework.hooks import Hook

ARMS = {  # name -> algorithm overrides (single_task is run per task, see run_single)
    "single_task": None,
    "equal_weight": ["algorithm=equal_weight"],
    "gradsplit (pairwise R)": ["algorithm=gradsplit", "algorithm.relation=pairwise"],
    "gradsplit (pairwise R, cut BN)": [
        "algorithm=gradsplit",
        "algorithm.relation=pairwise",
        "algorithm.task_bn=cut",
    ],
    "gradsplit (R = I)": ["algorithm=gradsplit", "algorithm.relation=identity"],
    "pcgrad": ["algorithm=pcgrad"],
    "task_heads": ["algorithm=task_heads"],
}
ABLATIONS = {  # --ablations: hard sharing plus the task-wise BatchNorm alone
    "gradsplit (R = 1)": ["algorithm=gradsplit", "algorithm.relation=all_ones"],
    "gradsplit (R = 1, cut BN)": [
        "algorithm=gradsplit",
        "algorithm.relation=all_ones",
        "algorithm.task_bn=cut",
    ],
}
TIMED = ["equal_weight", "gradsplit (pairwise R)", "gradsplit (pairwise R, cut BN)", "pcgrad", "task_heads"]


class CrossEval(Hook):
    """After the run: also evaluate the cross-dataset split, if the dataset has one."""

    def __init__(self, split: str = "cross"):
        self.split, self.metrics = split, {}

    def after_fit(self, trainer, summary: dict) -> None:
        if self.split in trainer.data.manifest["splits"]:
            self.metrics = trainer.evaluate(self.split)


def base_overrides(args) -> list[str]:
    """The pinned setting (configs/experiment/gradsplit_multi_source.yaml) plus this script's knobs."""
    return [
        "experiment=gradsplit_multi_source",
        "logger.progress=off",
        "logger.tensorboard=false",
        "trainer.log_every=1000",
        f"paths.run_root={args.run_root}",
    ] + list(args.overrides)


def run(cfg) -> dict[str, float]:
    """Train one config; final test metrics, the cross-dataset split's metrics and the wall time."""
    from framework.run import train

    hook = CrossEval()
    summary = train(cfg, hooks=[hook])
    return {**summary["final_metrics"], **hook.metrics, "wall_s": summary["wall_s"]}


def run_single(base: list[str], tasks: list[str], sources: dict[str, str], per_task: int) -> dict[str, float]:
    """Single-task reference: one network per task, trained on its own source only, with the
    per-task batch the multi-task runs use."""
    out: dict[str, float] = {"wall_s": 0.0}
    for t in tasks:
        metrics = run(run_config(base, [t], sources, per_task, f"gs_single_{t}"))
        out.update({k: v for k, v in metrics.items() if f"/{t}/" in k})
        out["wall_s"] += metrics["wall_s"]
    return out


# --- cost ----------------------------------------------------------------------------------------
def inference_costs(base: list[str], arms: dict, relation_file: str) -> dict[str, dict]:
    from framework.config import plugin_config
    from framework.data.module import DataModule
    from framework.metrics.cost import inference_cost
    from framework.registry import ALGORITHMS, DATASETS

    out = {}
    for name, extra in arms.items():
        extra = ["algorithm=single_task"] if extra is None else extra
        cfg = compose(base + extra + [f"algorithm.relation_file={relation_file}"] * ("pairwise" in name))
        data = DataModule(plugin_config(cfg.data, DATASETS), cfg.paths.data_root, 0)
        alg = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
        torch.manual_seed(0)
        model = alg.build_model(data.info)
        out[name] = inference_cost(model, torch.rand(1, *data.info.image_shape))
    return out


# --- step time -----------------------------------------------------------------------------------
def step_times(
    base: list[str], arms: dict, relation_file: str, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per optimizer step (forward, backward, step) on one fixed real batch, the arms
    interleaved round by round in rotating order so load drifts hit every arm alike."""
    from framework.config import plugin_config
    from framework.data.module import DataModule
    from framework.registry import ALGORITHMS, DATASETS
    from framework.run import build_strategy
    from framework.trainer import Trainer, _Window

    trainers, batch = {}, None
    for name, extra in arms.items():
        cfg = compose(base + extra + [f"algorithm.relation_file={relation_file}"] * ("pairwise" in name))
        data = DataModule(plugin_config(cfg.data, DATASETS), cfg.paths.data_root, 0)
        if batch is None:
            batch = next(data.epoch_batches())
        alg = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
        trainers[name] = Trainer(cfg, build_strategy(cfg), alg, data, None)
    names = list(trainers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            trainers[name].train_step(itertools.repeat(batch), _Window())
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


# --- report --------------------------------------------------------------------------------------
def report(tasks, competing, results, costs, times, table) -> str:
    single = {t: mean_std(results["single_task"].get(f"test/{t}/acc", []))[0] for t in tasks}
    protected = [t for t in tasks if t != competing]
    cross_tasks = [
        t
        for t in tasks
        if any(not all(math.isnan(v) for v in r.get(f"cross/{t}/acc", [math.nan])) for r in results.values())
    ]
    ew_median = statistics.median(times["equal_weight"]) if "equal_weight" in times else math.nan
    header = (
        ["method"]
        + [f"{t} acc %" for t in tasks]
        + ["Δm % (all)", f"Δm % (w/o {competing})"]
        + [f"cross {t} %" for t in cross_tasks]
        + ["params", "MFLOPs", "peak act. KiB", "step ms", "× equal_weight"]
    )
    rows = []
    for name, res in results.items():
        per_seed = len(res.get(f"test/{tasks[0]}/acc", []))
        dm_all = [delta_m({t: res[f"test/{t}/acc"][s] for t in tasks}, single) for s in range(per_seed)]
        dm_prot = [
            delta_m({t: res[f"test/{t}/acc"][s] for t in protected}, {t: single[t] for t in protected})
            for s in range(per_seed)
        ]
        cost = costs[name]
        median = statistics.median(times[name]) if name in times else math.nan
        rows.append(
            [name]
            + [fmt(res[f"test/{t}/acc"]) for t in tasks]
            + [fmt(dm_all, 1.0, 2), fmt(dm_prot, 1.0, 2)]
            + [fmt(res.get(f"cross/{t}/acc", [math.nan])) for t in cross_tasks]
            + [
                f"{cost['params']:,}",
                f"{cost['flops'] / 1e6:.1f}",
                f"{cost['peak_activation_bytes'] / 1024:.0f}",
                "" if math.isnan(median) else f"{median * 1e3:.1f}",
                "" if math.isnan(median) else f"{median / ew_median:.3f}",
            ]
        )
    lines = [
        markdown_table(header, rows),
        "",
        f"pairwise R (rows = groups, columns = tasks {tasks}): {table['relation']}",
        (
            f"pairwise table ({table['steps']} steps per run, {table['metric']}): single {table['single']}; "
            f"pairs {table['pair']}"
        ),
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short version: 2 seeds, few steps (make demo-gradsplit)"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--table-steps", type=int, default=150)
    parser.add_argument("--timing-rounds", type=int, default=30)
    parser.add_argument("--timing-warmup", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.01, help="pairwise tolerance (about one seed-std)")
    parser.add_argument("--arms", default="", help="comma-separated subset of the arms")
    parser.add_argument("--ablations", action="store_true", help="add the R = all-ones arms")
    parser.add_argument("--out", default=None, help="write results JSON here")
    parser.add_argument("--run-root", default=os.environ.get("MEDLEY_RUNS", "/tmp/medley-gradsplit-bench"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.table_steps, args.timing_rounds = 2, 100, 50, 10
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    logging.basicConfig(level=logging.WARNING)
    t_start = time.time()
    candidates = {**ARMS, **(ABLATIONS if args.ablations else {})}
    arms = {
        k: v
        for k, v in candidates.items()
        if not args.arms or k in args.arms.split(",") or k == "single_task"
    }
    base = base_overrides(args)
    cfg0 = compose(base + ["algorithm=gradsplit"])
    tasks, sources = task_sources(cfg0)
    competing = "noisy_digit" if "noisy_digit" in tasks else ""
    per_task = max(1, cfg0.data.batch_size // len(tasks))

    print(
        f"[1/4] pairwise table: {len(tasks)} + {len(tasks) * (len(tasks) - 1) // 2} runs of {args.table_steps} "
        f"steps",
        flush=True,
    )
    table = build_table(base, args.table_steps, "val", args.eps)
    relation_file = Path(args.run_root) / "gradsplit_relations.json"
    relation_file.parent.mkdir(parents=True, exist_ok=True)
    relation_file.write_text(json.dumps(table, indent=1))
    print(f"      R = {table['relation']} ({table['wall_s']:.0f} s)", flush=True)

    print(f"[2/4] {len(arms)} arms x {args.seeds} seeds, {args.steps} steps each", flush=True)
    results: dict[str, dict[str, list[float]]] = {name: {} for name in arms}
    for seed in range(args.seeds):
        for name, extra in arms.items():
            seed_base = base + [f"trainer.max_steps={args.steps}", f"trainer.seed={seed}"]
            if extra is None:
                metrics = run_single(seed_base, tasks, sources, per_task)
            else:
                rel = [f"algorithm.relation_file={relation_file}"] if "pairwise" in name else []
                metrics = run(compose(seed_base + extra + rel + [f"name=gs_bench_{extra[0].split('=')[1]}"]))
            for k, v in metrics.items():
                results[name].setdefault(k, []).append(v)
            accs = " ".join(f"{t}={metrics.get(f'test/{t}/acc', math.nan):.3f}" for t in tasks)
            print(f"      seed {seed} {name:32s} {accs}  ({metrics['wall_s']:.0f} s)", flush=True)

    print("[3/4] inference cost", flush=True)
    costs = inference_costs(base, arms, str(relation_file))
    print(
        f"[4/4] step time: {args.timing_rounds} interleaved rounds after {args.timing_warmup} warm-up",
        flush=True,
    )
    timed = {k: ARMS[k] for k in TIMED if k in arms}
    times = step_times(base, timed, str(relation_file), args.timing_rounds, args.timing_warmup)

    print()
    print(report(tasks, competing, results, costs, times, table))
    print(f"\nthreads: {torch.get_num_threads()}; total wall time {time.time() - t_start:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"results": results, "costs": costs, "step_times": times, "table": table, "args": vars(args)},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
