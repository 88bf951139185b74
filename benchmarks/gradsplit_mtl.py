"""GradSplit against its baselines on multi-source data with a competing task, and on the
planted-conflict toy.

Every multi-source run goes through the normal config path (``experiment=gradsplit_multi_source``
composed like ``medley train``); runs are spread over ``--workers`` processes of one thread.

1. pairwise tables (T single-task + T(T-1)/2 two-task runs per seed) with the arms' own
   normalisation (``cut``) over ``--table-seeds`` seeds, and one seed with the former ``chunk``;
2. for every seed, every arm on the same budget: single-task (one network per task on its own
   source), equal-weight, GradSplit with the multi-seed R (noise-aware rule), with the
   look-ahead R, with the one-seed R, the former protocol (``chunk`` BatchNorm and its
   one-seed table), task-specific last stages (``--pcgrad``: PCGrad too);
3. test accuracy per task, Δm relative to single-task, cross-dataset accuracy, the R every
   GradSplit run used, and per-seed paired differences against equal-weight with a paired t
   test, a Wilcoxon signed-rank test and a sign count;
4. inference cost and step time (interleaved medians on one fixed batch);
5. the planted-conflict toy (``algorithms.gradsplit.planted``), where the conflict is known.

    OMP_NUM_THREADS=1 python benchmarks/gradsplit_mtl.py            # full (5 seeds)
    OMP_NUM_THREADS=1 python benchmarks/gradsplit_mtl.py --quick    # make demo-gradsplit
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algorithms.gradsplit import planted
from algorithms.gradsplit.pairwise import build_table, run_config, task_sources
from algorithms.gradsplit.relation import pairwise_relation
from algorithms.gradsplit.report import delta_m, fmt, markdown_table, mean_std
from framework.compose import compose
from framework.hooks import Hook

NEW_BN = "cut"  # the arms' and the tables' normalisation: plain BatchNorm values in the forward
GS = ["algorithm=gradsplit", f"algorithm.task_bn={NEW_BN}"]
# name -> (algorithm overrides, where R comes from); R sources are resolved into explicit matrices
ARMS = {  # listed by priority: the runs go arm by arm in this order
    "equal_weight": (["algorithm=equal_weight"], None),
    "gradsplit (look-ahead R)": (GS + ["algorithm.relation=lookahead"], None),
    "gradsplit (multi-seed R)": (GS, "multi"),
    "single_task": (None, None),
    "gradsplit (former: chunk BN, chunk-table R)": (["algorithm=gradsplit", "algorithm.task_bn=chunk"], "old"),
    "gradsplit (one-seed R)": (GS, "one"),
    "task_heads": (["algorithm=task_heads"], None),
}
PCGRAD = {"pcgrad": (["algorithm=pcgrad"], None)}  # --pcgrad: 3-4x the step time of the others
ABLATIONS = {  # --ablations: hard sharing plus a task-wise BatchNorm alone (what each costs by itself)
    "gradsplit (R = 1, cut BN)": (GS, "ones"),
    "gradsplit (R = 1, chunk BN)": (["algorithm=gradsplit", "algorithm.task_bn=chunk"], "ones"),
}
MAIN = "gradsplit (multi-seed R)"
BASELINE = "equal_weight"


class CrossEval(Hook):
    """After the run: evaluate the cross-dataset split (if any) and keep the R the model used."""

    def __init__(self, split: str = "cross"):
        self.split, self.metrics, self.relation = split, {}, None

    def after_fit(self, trainer, summary: dict) -> None:
        done = any(k.startswith(f"{self.split}/") for k in trainer.final_metrics)
        if self.split in trainer.data.manifest["splits"] and not done:
            self.metrics = trainer.evaluate(self.split)
        relation = getattr(trainer.strategy.unwrap(trainer.model), "relation", None)
        self.relation = None if relation is None else relation.int().tolist()


def base_overrides(args) -> list[str]:
    """The pinned setting (configs/experiment/gradsplit_multi_source.yaml) plus this script's knobs."""
    return [
        "experiment=gradsplit_multi_source",
        "logger.progress=off",
        "logger.tensorboard=false",
        "trainer.log_every=1000",
        "trainer.keep_last=1",
        "data.eval_splits=[cross]",  # the end evaluates test (trainer.eval_split) and cross, not val
        f"paths.run_root={args.run_root}",
    ] + list(args.overrides)


def run(cfg) -> dict:
    """Train one config; final test metrics, the cross-dataset split's metrics, R and wall time."""
    from framework.run import train

    hook = CrossEval()
    summary = train(cfg, hooks=[hook])
    return {**summary["final_metrics"], **hook.metrics, "wall_s": summary["wall_s"], "relation": hook.relation}


# --- jobs (run in worker processes) ----------------------------------------------------------
def _init_worker() -> None:
    """One thread; warnings only (each run raises the ``medley`` logger to INFO, the handler filters)."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)


def job_table(base: list[str], steps: int, seed: int) -> dict:
    return build_table(base, steps, "val", seeds=[seed])


def job_single(base: list[str], tasks: list[str], sources: dict, per_task: int, tag: str) -> dict:
    """Single-task reference: one network per task on its own source, the multi-task per-task batch."""
    out: dict = {"wall_s": 0.0, "relation": None}
    for t in tasks:
        metrics = run(run_config(base, [t], sources, per_task, f"gs_single_{t}_{tag}"))
        out.update({k: v for k, v in metrics.items() if f"/{t}/" in k})
        out["wall_s"] += metrics["wall_s"]
    return out


def job_arm(overrides: list[str]) -> dict:
    return run(compose(overrides))


def job_planted(variant: str, seed: int) -> dict:
    return planted.run(variant, list(planted.RELATIONS), [seed])


def run_jobs(jobs: list[tuple], workers: int, on_done=None) -> list:
    """``(function, args)`` jobs in the listed order over ``workers`` one-thread processes;
    ``on_done(index, result)`` as each finishes (progress, partial results)."""
    on_done = on_done or (lambda i, r: None)
    if workers <= 1:
        _init_worker()
        out = []
        for i, (fn, a) in enumerate(jobs):
            out.append(fn(*a))
            on_done(i, out[-1])
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, maxtasksperchild=4) as pool:
        pending = [
            pool.apply_async(fn, a, callback=lambda r, i=i: on_done(i, r)) for i, (fn, a) in enumerate(jobs)
        ]
        return [p.get() for p in pending]


# --- relations -------------------------------------------------------------------------------
def merge_tables(tables: list[dict], eps: float, z: float) -> dict:
    """One-seed tables -> one table with per-seed lists (paired by position) and its R."""
    tasks = tables[0]["tasks"]
    merged = {
        **{k: tables[0][k] for k in ("tasks", "metric", "steps", "per_task_batch")},
        "seeds": [s for t in tables for s in t["seeds"]],
        "single": {t: [tab["single"][t] for tab in tables] for t in tasks},
        "pair": {
            key: {t: [tab["pair"][key][t] for tab in tables] for t in pair} for key, pair in tables[0]["pair"].items()
        },
        "eps": eps,
        "z": z,
        "wall_s": round(sum(t["wall_s"] for t in tables), 1),
    }
    merged["relation"] = pairwise_relation(merged, tasks, eps, z).int().tolist()
    return merged


def matrix(r: list[list[int]]) -> str:
    return "[" + ",".join("[" + ",".join(str(int(v)) for v in row) + "]" for row in r) + "]"


# --- cost ----------------------------------------------------------------------------------------
def inference_costs(base: list[str], arms: dict) -> dict[str, dict]:
    from framework.config import plugin_config
    from framework.data.module import DataModule
    from framework.metrics.cost import inference_cost
    from framework.registry import ALGORITHMS, DATASETS

    out = {}
    for name, extra in arms.items():
        cfg = compose(base + (extra or ["algorithm=single_task"]))
        data = DataModule(plugin_config(cfg.data, DATASETS), cfg.paths.data_root, 0)
        alg = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
        torch.manual_seed(0)
        model = alg.build_model(data.info)
        out[name] = inference_cost(model, torch.rand(1, *data.info.image_shape))
    return out


def step_times(base: list[str], arms: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per optimizer step (forward, backward, step) on one fixed real batch, the arms
    interleaved round by round in rotating order so load drifts hit every arm alike."""
    from framework.config import plugin_config
    from framework.data.module import DataModule
    from framework.registry import ALGORITHMS, DATASETS
    from framework.run import build_strategy
    from framework.trainer import Trainer, _Window

    trainers, batch = {}, None
    for name, extra in arms.items():
        cfg = compose(base + extra)
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


# --- statistics ----------------------------------------------------------------------------------
def paired(diffs: list[float]) -> dict:
    """Mean, std, paired t test, Wilcoxon signed-rank test (two-sided) and sign count of per-seed differences."""
    from scipy import stats

    n = len(diffs)
    mean, sd = mean_std(diffs)
    out = {"n": n, "mean": mean, "sd": sd, "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
    out["t"], out["p_t"] = math.nan, math.nan
    if n >= 2 and sd > 0:
        res = stats.ttest_1samp(diffs, 0.0)
        out["t"], out["p_t"] = float(res.statistic), float(res.pvalue)
    out["p_wilcoxon"] = math.nan
    if any(d != 0 for d in diffs):
        out["p_wilcoxon"] = float(stats.wilcoxon(diffs).pvalue)
    return out


def seed_delta_m(res: dict, tasks: list[str], single: dict) -> list[float]:
    seeds = len(res[f"test/{tasks[0]}/acc"])
    return [delta_m({t: res[f"test/{t}/acc"][s] for t in tasks}, {t: single[t] for t in tasks}) for s in range(seeds)]


# --- report --------------------------------------------------------------------------------------
def report(tasks, competing, results, costs, times) -> str:
    single = {t: mean_std(results["single_task"][f"test/{t}/acc"])[0] for t in tasks}
    protected = [t for t in tasks if t != competing]
    cross_tasks = [
        t for t in tasks if any(not math.isnan(v) for r in results.values() for v in r.get(f"cross/{t}/acc", []))
    ]
    ew_median = statistics.median(times[BASELINE]) if BASELINE in times else math.nan
    header = (
        ["method"]
        + [f"{t} %" for t in tasks]
        + ["Δm all", f"Δm w/o {competing}"]
        + [f"cross {t} %" for t in cross_tasks]
        + ["params", "MFLOPs", "step × EW"]
    )
    rows = []
    results = {"single_task": results["single_task"], **results}  # the reference first
    for name, res in results.items():
        cost = costs.get(name, {})
        median = statistics.median(times[name]) if name in times else math.nan
        rows.append(
            [name]
            + [fmt(res[f"test/{t}/acc"]) for t in tasks]
            + [fmt(seed_delta_m(res, tasks, single), 1.0, 2), fmt(seed_delta_m(res, protected, single), 1.0, 2)]
            + [fmt(res.get(f"cross/{t}/acc", [math.nan])) for t in cross_tasks]
            + [
                f"{cost['params']:,}" if cost else "",
                f"{cost['flops'] / 1e6:.1f}" if cost else "",
                "" if math.isnan(median) else f"{median / ew_median:.3f}",
            ]
        )
    lines = [markdown_table(header, rows), ""]
    # paired differences against equal-weight, per seed
    base = results[BASELINE]
    metrics = [("Δm all", None), (f"Δm w/o {competing}", None)] + [(f"{t}", f"test/{t}/acc") for t in tasks] + [
        (f"cross {t}", f"cross/{t}/acc") for t in cross_tasks
    ]
    prow = []
    for name, res in results.items():
        if name in ("single_task", BASELINE):
            continue
        cells = [name]
        for label, key in metrics:
            if label == "Δm all":
                a, b = seed_delta_m(res, tasks, single), seed_delta_m(base, tasks, single)
                scale = 1.0
            elif key is None:
                a, b = seed_delta_m(res, protected, single), seed_delta_m(base, protected, single)
                scale = 1.0
            else:
                a, b, scale = res[key], base[key], 100.0
            st = paired([(x - y) * scale for x, y in zip(a, b)])
            cells.append(f"{st['mean']:+.2f} (p {st['p_t']:.2f}, W {st['p_wilcoxon']:.2f}, {st['wins']}/{st['n']})")
        prow.append(cells)
    lines += [
        f"Per-seed paired differences against {BASELINE}: mean (paired t test p, Wilcoxon signed-rank p, "
        "seeds where the arm is higher); accuracy in points, Δm in %:",
        "",
        markdown_table(["method"] + [m for m, _ in metrics], prow),
    ]
    seeds = len(base[f"test/{tasks[0]}/acc"])
    lines += ["", "Per seed (Δm all, %):"]
    for name, res in results.items():
        lines.append(f"  {name:46s} " + " ".join(f"{v:+6.2f}" for v in seed_delta_m(res, tasks, single)))
    lines += ["", f"R used (rows = groups, columns = {tasks}), per seed 0..{seeds - 1}:"]
    for name, res in results.items():
        rel = res.get("relation", [])
        if rel and rel[0] is not None:
            distinct = sorted({matrix(r) for r in rel})
            lines.append(
                f"  {name}: " + (distinct[0] + " (every seed)" if len(distinct) == 1 else " ".join(matrix(r) for r in rel))
            )
    return "\n".join(lines)


def planted_report(res: dict[str, dict[str, list[dict]]]) -> str:
    rows = []
    for variant, arms in res.items():
        for arm, per_seed in arms.items():
            rows.append([variant, arm] + [fmt([r[t] for r in per_seed], 1.0, 3) for t in planted.TASKS])
    lines = [markdown_table(["variant", "arm"] + [f"{t} nMSE" for t in planted.TASKS], rows), ""]
    for variant, arms in res.items():
        ab = lambda arm: [r["A"] + r["B"] for r in arms[arm]]
        st = paired([h - a for h, a in zip(ab("hps"), ab("asym"))])
        lines.append(
            f"{variant}: A+B nMSE, hard sharing minus asymmetric R per seed: mean {st['mean']:+.3f}, "
            f"paired t={st['t']:.2f} p={st['p_t']:.4f}, Wilcoxon p={st['p_wilcoxon']:.4f}, "
            f"lower with GradSplit in {st['wins']}/{st['n']} seeds"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="make demo-gradsplit: the planted toy and equal-weight vs look-ahead GradSplit, 2 seeds",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--table-steps", type=int, default=150)
    parser.add_argument("--table-seeds", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.01, help="pairwise tolerance")
    parser.add_argument("--z", type=float, default=1.0, help="pairwise rule: standard errors a drop must exceed")
    parser.add_argument("--lookahead-steps", type=int, default=80, help="look-ahead R: warm-up steps")
    parser.add_argument("--planted-seeds", type=int, default=5)
    parser.add_argument("--timing-rounds", type=int, default=20)
    parser.add_argument("--timing-warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="one-thread worker processes")
    parser.add_argument("--arms", default="", help="comma-separated subset of the arms")
    parser.add_argument("--ablations", action="store_true", help="add R = all-ones with chunk BatchNorm")
    parser.add_argument("--pcgrad", action="store_true", help="add PCGrad (3-4x the step time)")
    parser.add_argument("--out", default=None, help="write results JSON here")
    parser.add_argument(
        "--resume", action="store_true", help="reuse the finished jobs in RUN_ROOT/gradsplit_partial.jsonl (same settings)"
    )
    parser.add_argument("--run-root", default=os.environ.get("MEDLEY_RUNS", "/tmp/medley-gradsplit-bench"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    ARMS["gradsplit (look-ahead R)"] = (
        GS + ["algorithm.relation=lookahead", f"algorithm.lookahead_steps={args.lookahead_steps}"],
        None,
    )
    names = list(ARMS)
    names[5:5] = list(ABLATIONS) if args.ablations else []  # after the former protocol's arm
    candidates = {n: {**ARMS, **ABLATIONS}[n] for n in names} | (PCGRAD if args.pcgrad else {})
    if args.quick:
        args.seeds, args.table_seeds, args.timing_rounds = 2, 0, 0
        candidates = {k: ARMS[k] for k in (BASELINE, "gradsplit (look-ahead R)")}
    _init_worker()
    t_start = time.time()
    wanted = args.arms.split(",") if args.arms else list(candidates)
    arms = {k: v for k, v in candidates.items() if k in wanted or k in ("single_task", BASELINE) and not args.quick}
    base = base_overrides(args)
    cfg0 = compose(base + ["algorithm=gradsplit"])  # prepares the data once, before the workers start
    tasks, sources = task_sources(cfg0)
    competing = "noisy_digit" if "noisy_digit" in tasks else ""
    per_task = max(1, cfg0.data.batch_size // len(tasks))

    relations: dict[str, list[list[int]]] = {"ones": [[1] * len(tasks)] * len(tasks)}
    tables: dict[str, dict] = {}
    partial = Path(args.run_root) / "gradsplit_partial.jsonl"
    partial.parent.mkdir(parents=True, exist_ok=True)
    previous: dict[tuple, dict] = {}
    if args.resume and partial.exists():  # finished jobs of an interrupted run with the same settings
        for line in partial.read_text().splitlines():
            entry = json.loads(line)
            previous[(entry["arm"], entry["seed"])] = entry["metrics"]
        print(f"      resuming: {len(previous)} finished jobs read from {partial}", flush=True)
    else:
        partial.unlink(missing_ok=True)

    def arm_overrides(name: str, seed: int) -> list[str] | None:
        extra, src = arms[name]
        if extra is None:
            return None
        rel = [f"algorithm.relation={matrix(relations[src])}"] if src else []
        tag = f"{name.split(' ')[0]}{list(arms).index(name)}"
        return base + [f"trainer.max_steps={args.steps}", f"trainer.seed={seed}"] + extra + rel + [
            f"name=gs_{tag}_s{seed}"
        ]

    def arm_job(name: str, seed: int) -> tuple:
        if arms[name][0] is None:
            seed_base = base + [f"trainer.max_steps={args.steps}", f"trainer.seed={seed}"]
            return (job_single, (seed_base, tasks, sources, per_task, f"s{seed}"))
        return (job_arm, (arm_overrides(name, seed),))

    def submit(keyed: list[tuple[tuple, tuple]]) -> list:
        """Run ``(key, job)`` pairs; every finished arm is printed and appended to the partial file."""
        reused = [(k, previous[k]) for k, _ in keyed if k in previous]
        keyed = [(k, j) for k, j in keyed if k not in previous]
        keys = [k for k, _ in keyed]

        def progress(i: int, metrics) -> None:
            name, seed = keys[i]
            with partial.open("a") as f:
                f.write(json.dumps({"arm": name, "seed": seed, "metrics": metrics}) + "\n")
            if name.startswith("table:"):
                print(f"      table {name[6:]} seed {seed} done ({metrics['wall_s']:.0f} s)", flush=True)
                return
            if not name.startswith("planted:"):
                accs = " ".join(f"{t}={metrics.get(f'test/{t}/acc', math.nan):.3f}" for t in tasks)
                print(f"      seed {seed} {name:44s} {accs}  ({metrics['wall_s']:.0f} s)", flush=True)

        return reused + list(zip(keys, run_jobs([j for _, j in keyed], args.workers, progress)))

    # stage 1: arms that need no table (seed by seed), then the tables; stage 2: the rest
    needs_table = {n for n, (_, src) in arms.items() if src in ("multi", "one", "old")}
    first = [n for n in (BASELINE, "gradsplit (look-ahead R)", *ABLATIONS) if n in arms]
    # arm by arm, in the listed order: a run cut short still has whole arms over every seed
    stage1 = [((n, seed), arm_job(n, seed)) for n in first for seed in range(args.seeds)]
    sources_needed = {arms[n][1] for n in needs_table}
    table_base = base + ["data.eval_splits=[]"]  # the table reads val only (trainer.eval_split)
    if sources_needed:
        stage1 += [
            (("table:cut", 100 + s), (job_table, (table_base + [f"algorithm.task_bn={NEW_BN}"], args.table_steps, 100 + s)))
            for s in range(args.table_seeds)
        ]
        if "old" in sources_needed:
            stage1.append(
                (("table:chunk", 100), (job_table, (table_base + ["algorithm.task_bn=chunk"], args.table_steps, 100)))
            )
    print(
        f"[1/4] {len(first)} arms x {args.seeds} seeds ({args.steps} steps, {args.workers} workers), then pairwise "
        f"tables: {args.table_seeds} seeds with {NEW_BN} BatchNorm (100..{99 + args.table_seeds}) and one with chunk, "
        f"{len(tasks)} + {len(tasks) * (len(tasks) - 1) // 2} runs of {args.table_steps} steps each",
        flush=True,
    )
    done = submit(stage1)
    if sources_needed:
        cut = [r for (k, _), r in done if k == "table:cut"]
        tables["multi"] = merge_tables(cut, args.eps, args.z)
        tables["one"] = merge_tables(cut[:1], args.eps, 0.0)
        if "old" in sources_needed:
            tables["old"] = merge_tables([r for (k, _), r in done if k == "table:chunk"], args.eps, 0.0)
        for key, tab in tables.items():
            relations[key] = tab["relation"]
            print(f"      {key:5s} R = {matrix(tab['relation'])}", flush=True)
        print(f"      single {tables['multi']['single']}\n      pairs {tables['multi']['pair']}", flush=True)

    same: dict[str, str] = {}  # arm -> an earlier arm with the identical config (run once)
    ran_first = first + [n for n in arms if n not in first]  # stage 1's arms have already run
    for name in ran_first:
        for other in ran_first:
            if other == name:
                break
            if None not in (arms[name][0], arms[other][0]) and arm_overrides(name, 0)[:-1] == arm_overrides(
                other, 0
            )[:-1]:
                same[name] = other
                break
    rest = [n for n in arms if n not in first and n not in same]
    stage2 = [((n, seed), arm_job(n, seed)) for n in rest for seed in range(args.seeds)]
    if args.planted_seeds and not args.arms:
        stage2 += [
            ((f"planted:{v}", seed), (job_planted, (v, seed))) for v in planted.VARIANTS for seed in range(args.planted_seeds)
        ]
    print(f"[2/4] {len(rest)} more arms x {args.seeds} seeds and the planted-conflict toy", flush=True)
    done += submit(stage2)
    results: dict[str, dict[str, list]] = {name: {} for name in arms}
    toy: dict[str, dict[str, list]] = {}
    for (name, seed), metrics in sorted(done, key=lambda kv: kv[0][1]):
        if name.startswith("table:"):
            continue
        if name.startswith("planted:"):
            for arm, rows in metrics.items():
                toy.setdefault(name.split(":")[1], {}).setdefault(arm, []).extend(rows)
            continue
        for k, v in metrics.items():
            results[name].setdefault(k, []).append(v)
    for name, other in same.items():
        results[name] = results[other]
        print(f"      {name}: the same R and settings as {other}, not rerun", flush=True)
    results = {name: results[name] for name in arms}

    costs, times = {}, {}
    if not args.quick:
        print("[3/4] inference cost and step time", flush=True)
        costs = inference_costs(base, {n: e for n, (e, _) in arms.items()})
        timed = {
            n: e + ([f"algorithm.relation={matrix(relations[s])}"] if s else [])
            for n, (e, s) in arms.items()
            if e is not None
        }
        times = step_times(base, timed, args.timing_rounds, args.timing_warmup)

    print("[4/4] report\n", flush=True)
    if "single_task" in results:
        print(report(tasks, competing, results, costs, times))
    else:  # quick: equal-weight against look-ahead GradSplit, per seed
        gs = results["gradsplit (look-ahead R)"]
        for t in tasks:
            d = [100 * (a - b) for a, b in zip(gs[f"test/{t}/acc"], results[BASELINE][f"test/{t}/acc"])]
            c = [100 * (a - b) for a, b in zip(gs.get(f"cross/{t}/acc", []), results[BASELINE].get(f"cross/{t}/acc", []))]
            print(
                f"{t:12s} test: EW {fmt(results[BASELINE][f'test/{t}/acc'])}, GradSplit {fmt(gs[f'test/{t}/acc'])}, "
                f"per seed {' '.join(f'{v:+.1f}' for v in d)}"
                + (f"; cross per seed {' '.join(f'{v:+.1f}' for v in c)}" if c else "")
            )
        print("look-ahead R per seed:", " ".join(matrix(r) for r in gs["relation"]))
    if toy:
        print("\nPlanted-conflict toy (test nMSE, lower is better; A and B related, C conflicting):\n")
        print(planted_report(toy))
    print(f"\nworkers: {args.workers} x 1 thread; total wall time {time.time() - t_start:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "results": results,
                    "planted": toy,
                    "costs": costs,
                    "step_times": times,
                    "tables": tables,
                    "relations": relations,
                    "args": vars(args),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
