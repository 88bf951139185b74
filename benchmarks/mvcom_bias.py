"""MvCoM vs uniform-margin CosFace on real faces with imbalanced variation levels.

The four real face sets beside the checkout (``experiment=mvcom_faces``: 32×32 grey, synthetic
blur at 3 levels and occlusion at 2, 10 % of training images degraded per factor, the meta, val
and test splits balanced over every level). Both arms are the ``mvcom`` plugin through the real
trainer (``algorithm=mvcom_cosface`` never updates its table), with the same seeds. Test metric:
leave-one-out rank-1 identification over the held-out identities, broken down by each factor's
levels (``algorithms/mvcom/metrics.py``), plus verification AUC over all pairs.

    python -m benchmarks.mvcom_bias                  # 3 seeds, 600 steps (the README table)
    python -m benchmarks.mvcom_bias --meta-every 2   # φ updated every 2nd step (about 1.5x faster)
    python -m benchmarks.mvcom_bias --seeds 0 --steps 60 --out /tmp/smoke.md

Prints a markdown table (mean ± std over seeds) and the learned table's signs: for each factor,
in how many seeds every minority level ended with a larger offset than the majority level.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import algorithms.mvcom  # noqa: F401 - registers the plugin where its entry point is not installed
from benchmarks.cdt_bench import fmt, markdown, mean_std
from framework.compose import compose
from framework.run import train

ARMS = {"cosface": "mvcom_cosface", "mvcom": "mvcom"}
METRICS = [("acc", "acc_all"), ("mean_gap", "mean_gap"), ("worst_minority", "worst_min"), ("gap_blur", "gap blur"),
           ("gap_occlusion", "gap occl."), ("auc", "AUC")]


def run_arm(arm: str, seed: int, steps: int, data_root: Path, run_dir: Path, extra: list[str]) -> dict:
    cfg = compose(["experiment=mvcom_faces", f"algorithm={ARMS[arm]}", f"trainer.seed={seed}",
                   f"trainer.max_steps={steps}", f"paths.data_root={data_root}", f"paths.run_dir={run_dir}",
                   "logger.progress=off", "logger.tensorboard=false", "trainer.ckpt_every=0", *extra])
    summary = train(cfg)
    final = summary["final_metrics"]
    out = {k.split("/")[-1]: v for k, v in final.items() if k.startswith("test/identity/groups/")}
    out["auc"] = final["test/identity/verify/auc"]
    out["wall_s"] = summary["wall_s"]
    table = json.loads((run_dir / "margin_table.json").read_text())["factors"]
    return {"metrics": out, "table": table, "history": history(run_dir, table)}


def history(run_dir: Path, table: dict) -> list[tuple[int, float]]:
    """(step, mean over factors of φ(minority levels) − φ(majority level)) from the logged table."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = []
    for r in rows:
        diffs = []
        for factor, levels in table.items():
            major = max(levels, key=lambda n: levels[n]["freq"])
            keys = {n: f"train/mvcom/phi/{factor}/{n}" for n in levels}
            if all(k in r for k in keys.values()):
                diffs += [r[keys[n]] - r[keys[major]] for n in levels if n != major]
        if diffs:
            out.append((r["step"], sum(diffs) / len(diffs)))
    return out


def minority_favoured(table: dict) -> dict[str, bool]:
    """Per factor: every minority level's offset is above the majority (most frequent) level's."""
    out = {}
    for factor, levels in table.items():
        major = max(levels.values(), key=lambda e: e["freq"])
        out[factor] = all(e["phi"] > major["phi"] for e in levels.values() if e is not major)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--data-root", default=str(Path.home() / ".cache" / "medley" / "data"))
    parser.add_argument("--meta-every", type=int, default=1, help="MvCoM's meta update every N steps")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", default="", help="also write the markdown report here")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both arms")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    results: dict[str, list[dict]] = {a: [] for a in args.arms}
    with tempfile.TemporaryDirectory(prefix="mvcom-bench-") as tmp:
        for seed in args.seeds:
            for arm in args.arms:
                extra = [f"algorithm.meta_every={args.meta_every}"] if arm == "mvcom" else []
                r = run_arm(arm, seed, args.steps, Path(args.data_root), Path(tmp) / f"{arm}-{seed}",
                            extra + args.overrides)
                results[arm].append(r)
                print(f"seed {seed} {arm}: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(r["metrics"].items())),
                      flush=True)
    rows = [[arm] + [fmt([r["metrics"].get(k, float("nan")) for r in results[arm]]) for k, _ in METRICS]
            for arm in args.arms]
    head = (f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.steps} steps, MvCoM meta update "
            f"every {args.meta_every} step(s), test split "
            f"(held-out identities, every level equally often), rank-1 identification; "
            f"{(time.time() - t0) / 60:.1f} min in all")
    report = [head, "",
              markdown(["method"] + [name for _, name in METRICS], rows), ""]
    if len(args.arms) == 2:
        gaps = [m["metrics"]["mean_gap"] - c["metrics"]["mean_gap"]
                for m, c in zip(results["mvcom"], results["cosface"])]
        report.append(f"mean_gap MvCoM − CosFace per seed: {', '.join(f'{g:+.3f}' for g in gaps)} "
                      f"(smaller in {sum(g < 0 for g in gaps)} of {len(gaps)})")
        report.append("")
    if "mvcom" not in results:
        print("\n".join(report))
        return
    tables = [r["table"] for r in results["mvcom"]]
    width = max(len(levels) for levels in tables[0].values())
    header = ["factor"] + [f"level {i}: φ (π)" for i in range(width)] + ["minority > majority"]
    table_rows = []
    for factor, levels in tables[0].items():
        cells = [f"{name}: {fmt([t[factor][name]['phi'] for t in tables])} ({levels[name]['freq']:.2f})"
                 for name in levels]
        favoured = sum(minority_favoured(t)[factor] for t in tables)
        table_rows.append([factor] + cells + [""] * (width - len(cells)) + [f"{favoured} of {len(tables)} seeds"])
    report += ["Learned margin table (MvCoM, end of training, mean ± std over seeds):", "",
               markdown(header, table_rows), "",
               "φ(minority) − φ(majority), mean over minority levels and factors, during training (per seed):", ""]
    for seed, r in zip(args.seeds, results["mvcom"]):
        picks = r["history"][:: max(1, len(r["history"]) // 8)] + r["history"][-1:]
        report.append(f"- seed {seed}: " + ", ".join(f"step {s}: {v:+.3f}" for s, v in dict(picks).items()))
    walls = {arm: mean_std([r["metrics"]["wall_s"] for r in results[arm]])[0] for arm in args.arms}
    report += ["", "training time per run: " + ", ".join(f"{arm} {w:.0f} s" for arm, w in walls.items())]
    text = "\n".join(report)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
