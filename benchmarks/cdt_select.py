"""Choose the inner step α of the meta arms on the validation domains of ``cdt_faces.py``.

Each fold of ``benchmarks/cdt_faces.py`` trains on two domains, validates on a third and tests on
the fourth. Here every candidate α of ``cdt`` and ``cdt_meta`` trains from scratch on each
fold's training domains with a seed the benchmark does not use, and only the **validation**
domain is scored (the trainer's own evaluations are restricted to it too, ``algorithm.eval_domain``;
no test-domain metric is computed). Each arm's α with the best
mean validation AUC over the four folds goes into ``SELECTED`` in ``cdt_faces.py``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdt_select.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cdt_bench import markdown
from benchmarks.cdt_faces import DOMAINS, fold, key, load_results, run_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    ap.add_argument("--arms", nargs="+", default=["cdt"])
    ap.add_argument("--seed", type=int, default=100, help="a seed the benchmark does not use")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results", default="runs/cdt_select.jsonl",
                    help="one line per finished run; runs already there are not rerun")
    ap.add_argument("--run-root", default=os.environ.get("MEDLEY_RUNS", "runs"))
    args = ap.parse_args()
    tasks = [{"run_root": args.run_root, "protocol": "select", "test_domain": t, "seed": args.seed, "arm": arm,
              "name": f"{arm}@{a:g}", "steps": args.steps, "val_only": True, "overrides": [f"algorithm.alpha={a}"]}
             for arm in args.arms for a in args.alphas for t in DOMAINS]
    t0 = time.time()
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in load_results([args.results])}
    run_all([{**t, "results_file": args.results} for t in tasks if key(t) not in done], args.workers,
            results_file=args.results)
    results = load_results([args.results])
    rows, chosen = [], {}
    for arm in args.arms:
        best = None
        for a in args.alphas:
            runs = {r["test_domain"]: r["val"]["auc"] for r in results if r["name"] == f"{arm}@{a:g}"}
            mean = float(np.mean(list(runs.values())))
            rows.append([arm, f"{a:g}"] + [f"{runs[t]:.3f}" for t in DOMAINS] + [f"{mean:.4f}"])
            if best is None or mean > best[1]:
                best = (a, mean)
        chosen[arm] = best[0]
    print("\nValidation AUC (each column: the fold's validation domain; its test domain is not scored)\n")
    print(markdown(["arm", "α"] + [f"val {fold(t)['val']}" for t in DOMAINS] + ["mean"], rows))
    print(f"\nchosen: {chosen}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
