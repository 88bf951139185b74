"""CDT on real faces: four small face sets as domains with disjoint identities.

Domains (``data=faces``, the ``shared`` preset over ``../shared/data``): ``lfw`` (LFW deep-funneled,
158 people), ``orl`` (40), ``yale`` (15), ``eyaleb`` (Extended Yale B, 38), at 32×32 grey.

Protocol (four folds, rotating): fold f tests on domain f, validates on domain f+1 (mod 4) and
trains on the other two; neither the test nor the validation domain is seen in training.
Settings are chosen on the validation domains only (``benchmarks/cdt_select.py``); this script
reports both. Every arm composes ``experiment=cdt_faces`` (second order, all domain pairs per
step, ``normalize=l2_trace``) and sees the same images per step (one P×K batch of every training
domain) for the same number of steps:

  cosface          CosFace on the pooled source domains
  cosface_triplet  pooled CosFace + the triplet loss, no meta step
  cdt_alpha0       Algorithm 1 with α = 0: the CDT term without the look-ahead
  cdt_meta         Algorithm 1 without the CDT term
  cdt              Algorithm 1
  cdt_shipped      (from scratch only) CDT as first shipped: first order, one sampled pair, α = 0.01

Two protocols: ``scratch`` (every arm from random initialisation) and ``finetune`` (every arm
continues from the same checkpoint, the fold's and seed's pooled-CosFace ``scratch`` run, with a
fresh optimizer at a lower learning rate).

Evaluation on each unseen domain: **every** image of it, **all** pairs, cosine similarity of the
flip-concatenated embedding; byte-identical images (Yale) are left out. TAR@FAR 1e-3/1e-2/1e-1,
ROC-AUC, leave-one-out rank-1, 10-fold balanced accuracy over all pairs, and LFW's standard
protocol (``acc_lfw``: a balanced pair list of 10 contiguous folds of up to 300 + 300 pairs,
drawn once per domain and shared by every run). Paired statistics over (fold, seed): the mean
difference, its standard deviation, the paired t statistic with its two-sided p value, and how
often the first arm is ahead.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdt_faces.py            # 4 folds × 3 seeds, 2 workers
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdt_faces.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cdt_bench import diagnostics, fmt, markdown, paired
from framework.hooks import Hook
from framework.metrics.verification import Verification, lfw_style_pairs

DOMAINS = ("lfw", "orl", "yale", "eyaleb")
#: arm -> overrides on top of experiment=cdt_faces (α of the meta arms: see SELECTED)
ARMS = {
    "cosface": ["algorithm=face_cosface"],
    "cosface_triplet": ["algorithm=face_cosface", "algorithm.triplet_weight=1.0"],
    "cdt_alpha0": ["algorithm=cdt", "algorithm.alpha=0"],
    "cdt_meta": ["algorithm=cdt_meta"],
    "cdt": ["algorithm=cdt"],
    "cdt_shipped": ["algorithm=cdt", "algorithm.pairs_per_step=1", "algorithm.second_order=false",
                    "algorithm.alpha=0.01"],
}
SCRATCH_ONLY = ("cdt_shipped",)
#: α of each meta arm, chosen by benchmarks/cdt_select.py on the validation domains (docs/cdt.md)
SELECTED = {"cdt_meta": 0.01, "cdt": 0.01}
COLUMNS = [("tar@far=0.001", "TAR@1e-3"), ("tar@far=0.01", "TAR@1e-2"), ("tar@far=0.1", "TAR@1e-1"),
           ("auc", "AUC"), ("rank1", "rank-1"), ("acc", "10-fold acc"), ("acc_lfw", "LFW-protocol acc")]
#: (first, second): paired differences first − second
COMPARISONS = [("cdt", "cosface"), ("cdt_meta", "cosface"), ("cosface_triplet", "cosface"),
               ("cdt_alpha0", "cosface_triplet"), ("cdt_meta", "cosface_triplet"), ("cdt", "cdt_meta"),
               ("cdt", "cdt_alpha0"), ("cdt", "cdt_shipped")]


def fold(test: str) -> dict[str, object]:
    """Test domain ``test``, validation the next domain, training the other two."""
    i = DOMAINS.index(test)
    val = DOMAINS[(i + 1) % len(DOMAINS)]
    return {"test": test, "val": val, "train": [d for d in DOMAINS if d not in (test, val)]}


class UnseenDomains(Hook):
    """After training: verification over every image of each named unseen domain, all splits."""

    def __init__(self, roles: dict[str, str]):
        self.roles, self.metrics = roles, {}

    def after_fit(self, trainer, summary: dict) -> None:
        data, algorithm = trainer.data, trainer.algorithm
        model = trainer.strategy.unwrap(trainer.model).eval()
        names = list(data.info.extra["domains"])
        for role, domain in self.roles.items():
            self.metrics[role] = evaluate_domain(data, algorithm, model, names.index(domain))


def evaluate_domain(data, algorithm, model, index: int) -> dict[str, float]:
    emb, who, uid, digests = [], [], [], []
    with torch.no_grad():
        for s, split in enumerate(sorted(data.manifest["splits"])):
            for batch in data.eval_loader(split):
                keep = batch["mask"] & (batch["domain"] == index)
                if keep.any():
                    emb.append(algorithm.embed(model, batch["image"][keep]))
                    who.append(batch["person"][keep])
                    uid.append(s * 1_000_000 + batch["id"][keep])  # ids restart in every split
                    digests += [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in batch["image"][keep]]
    uid_all, who_all, emb_all = torch.cat(uid), torch.cat(who), torch.cat(emb)
    first: dict[str, int] = {}
    twins = []
    for u, d in zip(uid_all.tolist(), digests):
        if d in first:
            twins.append([first[d], u])
        else:
            first[d] = u
    exclude = torch.tensor(twins, dtype=torch.long).reshape(-1, 2)
    metric = Verification(exclude=exclude)
    metric.update(emb_all, who_all, uid_all)
    out = metric.compute()
    # LFW's standard protocol; the pair list depends only on the domain's images, so every run shares it
    lfw = Verification(pairs=lfw_style_pairs(uid_all, who_all, folds=10, per_fold=600, seed=0, exclude=exclude),
                       protocol="lfw")
    lfw.update(emb_all, who_all, uid_all)
    got = lfw.compute()
    out.update(acc_lfw=got["acc"], acc_lfw_std=got["acc_std"], lfw_pairs=got["pairs_pos"] + got["pairs_neg"],
               images=float(len(uid_all)), identical_pairs=float(len(twins)))
    return out


def run_dir(root: str, protocol: str, test: str, arm: str, seed: int) -> Path:
    return Path(root).resolve() / "cdt_faces" / protocol / f"{test}-{arm}-seed{seed}"


def run(task: dict) -> dict:
    """One training run (a worker process): ``task`` names protocol, fold, seed, arm and settings."""
    torch.set_num_threads(1)
    import logging

    logging.getLogger("medley").setLevel(logging.WARNING)
    from framework.compose import compose
    from framework.run import train

    if task.get("results_file"):  # another invocation may have finished this run since the plan was made
        for r in load_results([task["results_file"]]):
            if key(r) == key(task):
                return {**r, "reused": True}
    f = fold(task["test_domain"])
    roles = {"val": f["val"]} if task.get("val_only") else {"test": f["test"]}
    out_dir = run_dir(task["run_root"], task["protocol"], f["test"], task["name"], task["seed"])
    overrides = ["experiment=cdt_faces", *ARMS[task["arm"]], *task.get("overrides", []),
                 f"data.holdout_domain={f['test']}", f"data.train_sources=[{','.join(f['train'])}]",
                 "data.verify=size", f"trainer.seed={task['seed']}", f"trainer.max_steps={task['steps']}",
                 f"paths.run_dir={out_dir}", "logger.progress=off", "logger.tensorboard=false"]
    if task["protocol"] == "finetune":
        start = run_dir(task["run_root"], "scratch", f["test"], "cosface", task["seed"])
        deadline = time.time() + 3600
        while not (start / "summary.json").exists():  # the pooled-CosFace scratch run of this fold and seed
            if time.time() > deadline:
                raise TimeoutError(f"no finished pooled-CosFace run at {start} to fine-tune from")
            time.sleep(2)
        overrides += [f"resume={start}", "resume_weights_only=true", f"optim.lr={task['ft_lr']}",
                      "optim.warmup_steps=0"]
    if task.get("val_only"):  # the trainer's own evaluations read the validation domain too, never the test one
        overrides.append(f"algorithm.eval_domain={f['val']}")
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    cfg = compose(overrides)
    hook = UnseenDomains(roles)
    t0 = time.time()
    summary = train(cfg, hooks=[hook])
    after = min(100, task["steps"] // 3)
    return {**{k: task[k] for k in ("protocol", "test_domain", "seed", "name", "steps")}, "val_domain": f["val"],
            "overrides": task.get("overrides", []),
            "wall_s": time.time() - t0, "train_s": summary["wall_s"], **hook.metrics,
            **diagnostics(Path(summary["run_dir"]), after)}


def key(r: dict) -> tuple:
    return r["protocol"], r["test_domain"], r["seed"], r["name"]


def load_results(paths: list[str]) -> list[dict]:
    """Finished runs from results files (one JSON object per line); a later line wins."""
    out: dict = {}
    for path in paths:
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    out[key(r)] = r
    return list(out.values())


def run_all(tasks: list[dict], workers: int, log=print, results_file: str | None = None) -> list[dict]:
    """Run ``tasks`` on ``workers`` processes (spawned, one thread each), in the given order; each
    finished run is appended to ``results_file`` at once, so an interrupted benchmark keeps it."""
    t0, results = time.time(), []
    if workers <= 1:
        it = map(run, tasks)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, maxtasksperchild=8)
        it = pool.imap(run, tasks)
    try:
        for r in it:
            results.append(r)
            if results_file and not r.get("reused"):
                with open(results_file, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
            role = "test" if "test" in r else "val"
            m = r[role]
            log(f"[{time.time() - t0:6.0f}s] {r['protocol']:8s} test={r['test_domain']:6s} seed={r['seed']} "
                f"{r['name']:15s} {role} {r[role + '_domain'] if role == 'val' else r['test_domain']}: "
                f"AUC={m['auc']:.3f} TAR@1e-2={m['tar@far=0.01']:.3f} acc_lfw={m['acc_lfw']:.3f} "
                f"hinge={r['hinge_active']:.2f} ({r['wall_s']:.0f}s)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return results


def plan(args) -> list[dict]:
    """Seed by seed (so that a partial run still pairs every arm over the folds): the scratch
    pooled-CosFace runs first (the fine-tune starting points), then the other scratch runs, the
    costliest first, then the fine-tune runs."""
    base = {"run_root": args.run_root, "ft_lr": args.ft_lr}

    def task(protocol, test, seed, arm):
        over = [f"algorithm.alpha={SELECTED[arm]}"] if arm in SELECTED else []
        steps = args.steps if protocol == "scratch" else args.ft_steps
        return {**base, "protocol": protocol, "test_domain": test, "seed": seed, "arm": arm, "name": arm,
                "steps": steps, "overrides": over + args.overrides}

    cost = {"cdt": 3, "cdt_meta": 3, "cdt_alpha0": 2, "cdt_shipped": 1, "cosface_triplet": 0, "cosface": 0}
    tasks = []
    for s in args.seeds:
        tasks += [task("scratch", t, s, "cosface") for t in args.test if "cosface" in args.arms or args.finetune]
        rest = [a for a in args.arms if a != "cosface"]
        tasks += sorted((task("scratch", t, s, a) for t in args.test for a in rest), key=lambda x: -cost[x["arm"]])
        if args.finetune:
            tasks += sorted((task("finetune", t, s, a) for t in args.test for a in args.arms if a not in SCRATCH_ONLY),
                            key=lambda x: -cost[x["arm"]])
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150, help="steps from scratch (every arm)")
    ap.add_argument("--ft-steps", type=int, default=50, help="fine-tune steps (every arm)")
    ap.add_argument("--ft-lr", type=float, default=0.01, help="fine-tune learning rate (every arm)")
    ap.add_argument("--no-finetune", dest="finetune", action="store_false")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--test", nargs="+", default=list(DOMAINS), choices=list(DOMAINS), help="test domains (folds)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one seed, one fold, 20 + 10 steps")
    ap.add_argument("--results", default="runs/cdt_faces.jsonl",
                    help="one line per finished run; runs already there are not rerun")
    ap.add_argument("--report-only", action="store_true", help="print the tables from --results and exit")
    ap.add_argument("--run-root", default=os.environ.get("MEDLEY_RUNS", "runs"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps, args.ft_steps, args.test = args.seeds[:1], 20, 10, args.test[:1]
    t0 = time.time()
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        done = {key(r) for r in load_results([args.results])}
        todo = [t for t in plan(args) if key(t) not in done]
        print(f"{len(todo)} runs to do ({len(done)} already in {args.results}); α of the meta arms: {SELECTED}",
              flush=True)
        run_all([{**t, "results_file": args.results} for t in todo], args.workers, results_file=args.results)
    results = [r for r in load_results([args.results]) if r["seed"] in args.seeds and r["test_domain"] in args.test]
    print(report(results, args))
    print(f"\nraw results: {args.results}; total {time.time() - t0:.0f}s")


def _index(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        out.setdefault(r["protocol"], {}).setdefault(r["name"], {})[(r["test_domain"], r["seed"])] = r
    return out


def report(results: list[dict], args) -> str:
    by = _index(results)
    seeds = sorted({r["seed"] for r in results})
    lines = [f"### CDT on faces: test domain rotating, validation the next domain, seeds {seeds}; "
             f"{args.steps} steps from scratch, {args.ft_steps} fine-tune steps (mean ± std over seeds)"]
    for protocol, arms in by.items():
        lines.append(f"\n#### {protocol}: mean over the four test domains (per seed, then mean ± std)\n")
        rows = []
        for arm in [a for a in ARMS if a in arms]:
            runs = arms[arm]
            seeds = sorted({s for _, s in runs})
            per_seed = {k: [float(np.mean([r["test"][k] for (t, s), r in runs.items() if s == sd])) for sd in seeds]
                        for k, _ in COLUMNS}
            rows.append([arm] + [fmt(per_seed[k]) for k, _ in COLUMNS]
                        + [fmt([r["hinge_active"] for r in runs.values()], 2)])
        lines.append(markdown(["method"] + [c for _, c in COLUMNS] + ["hinge"], rows))
        lines.append(f"\n#### {protocol}: test AUC per test domain\n")
        tests = sorted({t for runs in arms.values() for t, _ in runs}, key=DOMAINS.index)
        rows = [[arm] + [fmt([r["test"]["auc"] for (t, s), r in arms[arm].items() if t == td]) for td in tests]
                for arm in ARMS if arm in arms]
        lines.append(markdown(["method"] + [f"{t} (val {fold(t)['val']})" for t in tests], rows))
        lines.append(f"\n#### {protocol}: paired differences over (test domain, seed)\n")
        rows = []
        for a, b in COMPARISONS:
            if a in arms and b in arms:
                for key, name in (("auc", "AUC"), ("tar@far=0.01", "TAR@1e-2")):
                    keys = sorted(set(arms[a]) & set(arms[b]))
                    st = paired([arms[a][k]["test"][key] - arms[b][k]["test"][key] for k in keys])
                    rows.append([f"{a} − {b}", name, f"{st['mean']:+.4f} ± {st['std']:.4f}", f"{st['t']:+.2f}",
                                 f"{st['p']:.3g}", f"{st['wins']}/{st['n']}"])
        lines.append(markdown(["difference", "metric", "mean ± std", "paired t", "p", "first ahead"], rows))
    if {"scratch", "finetune"} <= set(by):
        lines.append("\n#### What the fine-tune protocol changes: gap(finetune) − gap(scratch), paired\n")
        rows = []
        for a, b in COMPARISONS:
            arms_s, arms_f = by["scratch"], by["finetune"]
            if all(x in arms_s and x in arms_f for x in (a, b)):
                keys = sorted(set(arms_s[a]) & set(arms_s[b]) & set(arms_f[a]) & set(arms_f[b]))
                d = [(arms_f[a][k]["test"]["auc"] - arms_f[b][k]["test"]["auc"])
                     - (arms_s[a][k]["test"]["auc"] - arms_s[b][k]["test"]["auc"]) for k in keys]
                st = paired(d)
                rows.append([f"{a} − {b}", f"{st['mean']:+.4f} ± {st['std']:.4f}", f"{st['t']:+.2f}",
                             f"{st['p']:.3g}", f"{st['wins']}/{st['n']}"])
        lines.append(markdown(["AUC gap", "change", "paired t", "p", "larger after fine-tuning"], rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
