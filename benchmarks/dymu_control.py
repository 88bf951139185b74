"""DYMU's controllability on dense_scenes (seg, layer-order depth, edges) against its baselines.

Per seed: one ``dymu`` run (its ``pretrain`` phase is the hard-sharing baseline, its ``anchor``
phase the single-task one, both scored on test at their phase end) and one ``phn_bn`` run. The
trained models are then evaluated on test at 20 preferences r ~ Dir(1) (the same for every method
and seed) at c = 0 and c = 1. Losses are divided by the single-task losses of the same seed, so
every task's anchor sits at 1. Reported: hypervolume (reference point ``--ref`` in those units),
uniformity μ_r averaged over the preferences, per-task metrics, MFLOPs of the derived trees, the
expected and argmax tree size on a grid of c over 200 preferences, and the trees chosen for
skewed and uniform preferences.

    python benchmarks/dymu_control.py --seeds 3 --out bench_dymu       # the README figures
    python benchmarks/dymu_control.py --seeds 1 --steps 200 --out /tmp/q  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framework.hooks import Hook  # noqa: E402

TASKS = ("seg", "depth", "edge")
METRICS = {"seg": "miou", "depth": "acc", "edge": "f1"}  # the per-task metric of the table


class Sweep(Hook):
    """After training: evaluate the model on test at every (preference, budget), and derive trees."""

    def __init__(self, prefs: np.ndarray, budgets: tuple[float, ...], grid_prefs: np.ndarray):
        self.prefs, self.budgets, self.grid_prefs = prefs, budgets, grid_prefs
        self.points: list[dict] = []
        self.trees: dict = {}
        self.grid: list[dict] = []

    def after_fit(self, trainer, summary):
        import torch

        from algorithms.dymu.regulariser import usage_probability_exact

        alg = trainer.algorithm
        net = trainer.strategy.unwrap(trainer.model)
        for budget in self.budgets:
            for r in self.prefs:
                alg.set_control(r.tolist(), budget)
                m = trainer.evaluate("test")
                self.points.append({"pref": r.tolist(), "budget": budget,
                                    **{k[len("test/"):]: v for k, v in m.items()}})
        if not hasattr(net, "edge_hyper"):
            return
        self.trees = {label.replace(" ", "_"): tree for label, tree in alg.typical_trees(net).items()}
        table = alg.costs(net)
        with torch.no_grad():
            for budget in (0.0, 0.25, 0.5, 0.75, 1.0):
                nodes, flops, expected = [], [], []
                for r in self.grid_prefs:
                    pref = torch.tensor(r, dtype=torch.float32)
                    tree = net.derive(pref, budget)
                    cost = table.cost(*tree)
                    nodes.append(cost["nodes"])
                    flops.append(cost["flops"] / 1e6)
                    expected.append(float(usage_probability_exact(net.edge_hyper(pref, budget)).sum()))
                self.grid.append({"budget": budget, "argmax_nodes": float(np.mean(nodes)),
                                  "expected_nodes": float(np.mean(expected)), "mflops": float(np.mean(flops))})


def run(overrides: list[str], sweep: Sweep | None) -> tuple[dict, Path]:
    from framework.compose import compose
    from framework.run import train

    summary = train(compose(overrides), hooks=[sweep] if sweep else [])
    return summary, Path(summary["run_dir"])


def loss_vector(metrics: dict, prefix: str = "") -> np.ndarray:
    return np.array([metrics[f"{prefix}{t}/loss"] for t in TASKS])


def summarise(points: list[dict], anchor: np.ndarray, ref: float) -> dict:
    """HV, mean uniformity, mean per-task metric, MFLOPs over a set of evaluation points."""
    from algorithms.dymu.pareto import hypervolume, uniformity

    losses = np.array([loss_vector(p) for p in points]) / anchor
    prefs = np.array([p["pref"] for p in points])
    out = {"hv": hypervolume(losses, [ref] * len(TASKS)),
           "uniformity": float(np.mean([uniformity(l, r) for l, r in zip(losses, prefs)])),
           "mflops": float(np.mean([p["tree/mflops"] for p in points])),
           "mflops_min": float(np.min([p["tree/mflops"] for p in points])),
           "mflops_max": float(np.max([p["tree/mflops"] for p in points])),
           "nodes": float(np.mean([p["tree/nodes"] for p in points])),
           "norm_loss": losses.mean(0).tolist()}
    out.update({f"{t}/{METRICS[t]}": float(np.mean([p[f"{t}/{METRICS[t]}"] for p in points])) for t in TASKS})
    return out


def fixed_point(metrics: dict, prefs: np.ndarray, anchor: np.ndarray, ref: float, prefix: str) -> dict:
    """A model whose output does not depend on the preference (hard sharing, single-task)."""
    points = [{"pref": r.tolist(), **{k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}}
              for r in prefs]
    return summarise(points, anchor, ref)


def seed_results(seed: int, args, prefs: np.ndarray, grid_prefs: np.ndarray) -> dict:
    common = ["experiment=dymu_dense_scenes", f"trainer.seed={seed}", "logger.progress=off",
              "logger.tensorboard=false", f"paths.run_root={args.out}/runs", f"trainer.max_steps={args.steps}",
              f"algorithm.lambda_active={args.lambda_active}", *args.override]
    t0 = time.time()
    sweep = Sweep(prefs, (0.0, 1.0), grid_prefs)
    _, run_dir = run([*common, "algorithm.phase_eval=[test]"], sweep)
    matrix = json.loads((run_dir / "eval_matrix.json").read_text())["matrix"]
    single, shared = matrix["anchor"]["test"], matrix["pretrain"]["test"]
    anchor = loss_vector(single)
    res = {"seed": seed, "dymu_run": str(run_dir), "anchor_loss": anchor.tolist(),
           "affinity": json.loads((run_dir / "affinity.json").read_text())["affinity"],
           "trees": sweep.trees, "budget_grid": sweep.grid,
           "single_task": fixed_point(single, prefs, anchor, args.ref, ""),
           "hard_sharing": fixed_point(shared, prefs, anchor, args.ref, ""),
           "dymu_c0": summarise([p for p in sweep.points if p["budget"] == 0.0], anchor, args.ref),
           "dymu_c1": summarise([p for p in sweep.points if p["budget"] == 1.0], anchor, args.ref),
           "dymu_points": sweep.points}
    t1 = time.time()
    phn = Sweep(prefs, (0.0,), grid_prefs)
    run([*common, "algorithm=phn_bn", f"trainer.max_steps={round(args.steps * args.phn_share)}",
         f"algorithm.pretrain_share={args.pretrain_share / args.phn_share}"], phn)
    res["phn_bn"] = summarise(phn.points, anchor, args.ref)
    res["wall_s"] = {"dymu": round(t1 - t0, 1), "phn_bn": round(time.time() - t1, 1)}
    return res


ARMS = [("single_task", "single-task (anchor)"), ("hard_sharing", "hard sharing"), ("phn_bn", "PHN-BN"),
        ("dymu_c0", "DYMU c=0"), ("dymu_c1", "DYMU c=1")]


def mean_sd(values) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(results: list[dict]) -> str:
    head = ("| method | HV ↑ | uniformity ↑ | seg mIoU | depth acc | edge F1 | MFLOPs (min–max) |\n"
            "|---|---|---|---|---|---|---|")
    rows = [head]
    for key, label in ARMS:
        rs = [r[key] for r in results]
        flops = f"{np.mean([r['mflops'] for r in rs]):.1f} ({min(r['mflops_min'] for r in rs):.1f}–" \
                f"{max(r['mflops_max'] for r in rs):.1f})"
        rows.append(f"| {label} | {mean_sd([r['hv'] for r in rs])} | {mean_sd([r['uniformity'] for r in rs])} | "
                    f"{mean_sd([r['seg/miou'] for r in rs])} | {mean_sd([r['depth/acc'] for r in rs])} | "
                    f"{mean_sd([r['edge/f1'] for r in rs])} | {flops} |")
    grid = ["", "| c | argmax nodes (of 12) | expected nodes | MFLOPs |", "|---|---|---|---|"]
    for i, g in enumerate(results[0]["budget_grid"]):
        vals = [r["budget_grid"][i] for r in results]
        grid.append(f"| {g['budget']:g} | {mean_sd([v['argmax_nodes'] for v in vals])} | "
                    f"{mean_sd([v['expected_nodes'] for v in vals])} | {mean_sd([v['mflops'] for v in vals])} |")
    return "\n".join(rows + grid)


def svg_plot(results: list[dict], path: Path) -> None:
    """Accuracy–FLOPs: mean normalised loss (lower is better) against MFLOPs of every evaluated model."""
    colours = {"single_task": "#444", "hard_sharing": "#1f77b4", "phn_bn": "#2ca02c", "dymu_c0": "#d62728",
               "dymu_c1": "#ff7f0e"}
    pts = []
    for r in results:
        anchor = np.array(r["anchor_loss"])
        for p in r["dymu_points"]:
            key = "dymu_c0" if p["budget"] == 0.0 else "dymu_c1"
            pts.append((p["tree/mflops"], float(np.mean(loss_vector(p) / anchor)), colours[key]))
        for key in ("single_task", "hard_sharing", "phn_bn"):
            pts.append((r[key]["mflops"], float(np.mean(r[key]["norm_loss"])), colours[key]))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = 0, max(xs) * 1.1, min(ys) * 0.95, max(ys) * 1.05
    sx = lambda x: 60 + (x - x0) / (x1 - x0) * 520
    sy = lambda y: 340 - (y - y0) / (y1 - y0) * 300
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="640" height="400" font-family="sans-serif" '
             'font-size="12">', '<rect width="640" height="400" fill="white"/>',
             '<line x1="60" y1="340" x2="590" y2="340" stroke="black"/>',
             '<line x1="60" y1="40" x2="60" y2="340" stroke="black"/>',
             f'<text x="320" y="375" text-anchor="middle">MFLOPs per image (0 – {x1:.0f})</text>',
             f'<text x="15" y="190" transform="rotate(-90 15 190)" text-anchor="middle">mean loss / single-task '
             f'({y0:.2f} – {y1:.2f})</text>']
    for x, y, c in pts:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{c}" fill-opacity="0.7"/>')
    for i, (key, label) in enumerate(ARMS):
        parts.append(f'<circle cx="440" cy="{60 + 16 * i}" r="4" fill="{colours[key]}"/>'
                     f'<text x="450" y="{64 + 16 * i}">{label}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=800, help="trainer.max_steps of the dymu run")
    parser.add_argument("--pretrain-share", type=float, default=0.15)
    parser.add_argument("--phn-share", type=float, default=0.6,
                        help="PHN-BN's steps as a share of DYMU's (its pretrain + the hypernetwork stages)")
    parser.add_argument("--lambda-active", type=float, default=5.0)
    parser.add_argument("--prefs", type=int, default=20)
    parser.add_argument("--ref", type=float, default=10.0, help="HV reference point, in single-task loss units")
    parser.add_argument("--out", type=Path, default=Path("bench_dymu"))
    parser.add_argument("override", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args(argv)
    import algorithms.dymu  # noqa: F401 - registers dymu where its entry point is not installed

    args.out.mkdir(parents=True, exist_ok=True)
    from algorithms.dymu.pareto import simplex_preferences

    prefs = simplex_preferences(len(TASKS), args.prefs, seed=2022)
    grid_prefs = simplex_preferences(len(TASKS), 200, seed=7)
    t0 = time.time()
    results = []
    for seed in range(args.seeds):
        results.append(seed_results(seed, args, prefs, grid_prefs))
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"seed {seed} done after {time.time() - t0:.0f} s", flush=True)
    text = table(results)
    trees = ["", "Trees (seed 0; layer by layer, bottom up: [tasks served]@stream whose weights run):"]
    for label, tree in results[0]["trees"].items():
        trees += [f"{label}: {tree['nodes']} nodes, {tree['flops'] / 1e6:.2f} MFLOPs", tree["drawing"]]
    report = (f"{text}\n{chr(10).join(trees)}\n\nλ_A = {args.lambda_active}, {args.seeds} seeds, {args.steps} steps, "
              f"HV reference {args.ref}; total {time.time() - t0:.0f} s\n")
    (args.out / "report.md").write_text(report)
    svg_plot(results, args.out / "accuracy_flops.svg")
    print(report)


if __name__ == "__main__":
    main()
