"""Cross-domain class-incremental digits: MSL + Mov against its baselines (``algorithm=cdcl``).

Data: ``digit_domains`` (a copy capped at ``--limit`` = 600 rows per domain and split), five
experiences of two new digits each, 30 steps each (0-1, 2-3, ..., ``experiment=cdcl_digits``). Each experience
draws from every source domain except the held-out one; each source domain is held out in turn.
After every experience the model is tested on the classes seen so far in the seen domains'
test rows, the held-out domain's test rows and scikit-learn's digits (a domain never trained on).

Methods (configs of the one plugin; Adam 1e-3, fresh per experience, batch 64, plain conv net
[8, 16, 32] → flatten → FC-64 → head):
  msl_mov     : Mahalanobis head + distillation (weight 30, T 1) + parameter smoothing (0.96);
  linear_mov  : the same with a linear head (isolates the head);
  lwf         : linear head + distillation only;
  finetune    : linear head, nothing against forgetting;
  er          : fine-tuning with a 200-row reservoir replayed 32 rows per step (rehearsal: reference).

Reported per method, mean ± std over seeds of the mean over held-out domains: final accuracy
(after the last experience, classes seen so far = all) and average incremental accuracy on the
seen domains, the held-out domain and sklearn, and forgetting (seen domains and held-out domain).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdcl_domains.py               # 3 seeds, 60 runs, 23 min here
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdcl_domains.py --quick       # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import algorithms.cdcl  # noqa: F401 - registers cdcl where the entry point is not installed
from framework.compose import compose
from framework.run import train

HELD_OUT = ("mnist", "mnist_m", "rotated_colour", "opencv")
METHODS = {
    "msl_mov": "cdcl",
    "linear_mov": "cdcl_linear_mov",
    "lwf": "cdcl_lwf",
    "finetune": "cdcl_finetune",
    "er": "cdcl_er",
}
COLUMNS = [("seen", "final_acc"), ("seen", "avg_acc"), ("heldout", "final_acc"), ("heldout", "avg_acc"),
           ("unseen", "final_acc"), ("unseen", "avg_acc"), ("seen", "forgetting"), ("heldout", "forgetting")]


def run_once(method: str, holdout: str, seed: int, args, root: Path) -> dict:
    overrides = [
        "experiment=cdcl_digits", f"algorithm={METHODS[method]}", f"data.holdout_domain={holdout}",
        f"data.limit={args.limit}", "data.verify=size", f"trainer.seed={seed}",
        f"algorithm.steps_per_experience={args.steps}", f"trainer.max_steps={5 * args.steps}",
        "model.widths=[8,16,32]", "logger.progress=off", "logger.tensorboard=false",
        f"paths.run_dir={root / f'{method}-{holdout}-{seed}'}", *args.override,
    ]
    summary = train(compose(overrides))
    doc = json.loads((Path(summary["run_dir"]) / "continual.json").read_text())
    return {"method": method, "holdout": holdout, "seed": seed, "wall_s": summary["wall_s"],
            **{f"{g}/{k}": doc[g][k] for g, k in COLUMNS}, "matrix": {g: doc[g]["matrix"] for g in
                                                                     ("seen", "heldout", "unseen")}}


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table(rows: list[dict], seeds: list[int], methods: list[str]) -> str:
    head = ["method", "seen final", "seen avg", "held-out final", "held-out avg", "sklearn final", "sklearn avg",
            "forgetting seen", "forgetting held-out"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        cells = [method]
        for g, k in COLUMNS:
            per_seed = [np.mean([r[f"{g}/{k}"] for r in rows if r["method"] == method and r["seed"] == s])
                        for s in seeds if any(r["method"] == method and r["seed"] == s for r in rows)]
            cells.append(fmt(per_seed) if per_seed else "–")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per experience")
    p.add_argument("--limit", type=int, default=600, help="rows per domain and split of the prepared copy")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--held-out", nargs="*", default=list(HELD_OUT))
    p.add_argument("--quick", action="store_true", help="one seed, one held-out domain, 10 steps per experience")
    p.add_argument("--out", default="runs/cdcl_domains")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.steps, args.held_out = 1, 10, args.held_out[:1]
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    seeds, rows, t0 = list(range(args.seeds)), [], time.time()
    for seed in seeds:
        for holdout in args.held_out:
            for method in args.methods:
                row = run_once(method, holdout, seed, args, root)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "matrix"}), flush=True)
                (root / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows, seeds, args.methods)
    minutes = (time.time() - t0) / 60
    print(f"\n{len(rows)} runs in {minutes:.1f} min\n\n{text}")
    (root / "table.md").write_text(text + f"\n\n{len(rows)} runs in {minutes:.1f} min\n")


if __name__ == "__main__":
    main()
