"""UniSeg against its baselines on seg_label_shift (three datasets with conflicting label spaces,
each with its own look, plus an unseen domain on textures).

Every run goes through the normal config path (``experiment=uniseg_label_shift``, composed like
``medley train``) and swaps only the algorithm config; all arms train the same model for the same
total number of steps:

  ce          softmax cross-entropy over the naively merged (unified) space   algorithm=uniseg_ce
  bce         sigmoid BCE, every class a negative wherever it is not the label algorithm=uniseg_bce
  bce_null    UniSeg stage 1: classes outside a pixel's dataset get no loss   algorithm=uniseg_bce_null
  bce_null+cr UniSeg: stage 1, statistics pass, class-relational BCE          algorithm=uniseg

Reported (test split; mean ± std over seeds, in %): mIoU of every training dataset in its own label
space; for each conflict (a super-class one dataset names while another labels its finer classes:
``digit`` vs fine's ``digit_0..9``, ``animal`` vs coarse's species, ``garment`` vs parts' groups) the
IoU of the super-class on the finer dataset's images (argmax restricted to a dataset that defines it)
and its mean predicted probability on the finer classes' pixels; mIoU on the unseen domain. For
the relational arm, how many relations the statistics pass found and how many are true
(a finer class → its super-class, from the manifest's ``extra.relations``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/uniseg_label_shift.py            # 3 seeds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/uniseg_label_shift.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import algorithms.uniseg  # noqa: F401 - registers uniseg where the entry point is not installed
from algorithms.gradsplit.report import fmt, mean_std
from framework.compose import compose
from framework.data.builtin.seg_label_shift import RELATIONS
from framework.run import train

ARMS = {
    "ce": ["algorithm=uniseg_ce"],
    "bce": ["algorithm=uniseg_bce"],
    "bce_null": ["algorithm=uniseg_bce_null"],
    "bce_null+cr": ["algorithm=uniseg"],
}
CONFLICTS = ("digit", "animal", "garment")
DATASETS = ("fine", "coarse", "parts")


def run_arm(arm: str, seed: int, args) -> dict:
    overrides = ["experiment=uniseg_label_shift", *ARMS[arm], f"trainer.seed={seed}",
                 f"trainer.max_steps={args.steps}", f"paths.run_root={args.run_root}", "logger.progress=off",
                 "logger.tensorboard=false", *args.override]
    summary = train(compose(overrides))
    m = summary["final_metrics"]
    out = {f"miou_{d}": m[f"test/seg/miou_{d}"] for d in DATASETS}
    for c in CONFLICTS:
        out[f"iou_{c}"] = m[f"test/seg/conflict_iou_{c}"]
        out[f"p_{c}"] = m[f"test/seg/conflict_p_{c}"]
    out["iou_conflict_mean"] = sum(out[f"iou_{c}"] for c in CONFLICTS) / len(CONFLICTS)
    out["p_conflict_mean"] = sum(out[f"p_{c}"] for c in CONFLICTS) / len(CONFLICTS)
    out["miou_unseen"] = m["unseen/seg/miou_unseen"]
    out["wall_s"] = summary["wall_s"]
    relations = Path(summary["run_dir"]) / "relations.json"
    if relations.exists():
        out.update(relation_counts(json.loads(relations.read_text())))
    return out


def relation_counts(doc: dict) -> dict:
    """Relations found, and how many are true (a finer class → its super-class, per the manifest)."""
    parent = {child: sup for sup, children in RELATIONS.items() for child in children}
    found = [(r["class"], j) for r in doc["relations"] for j in r["related"]]
    true = [(c, j) for c, j in found if parent.get(c) == j]
    expected = sum(1 for r in doc["relations"] if r["class"] in parent)
    return {"relations": len(found), "true_relations": len(true), "true_possible": expected}


def report(results: dict, args) -> str:
    arms = [a for a in ARMS if a in results]
    lines = [(f"### UniSeg miniature: seg_label_shift, {len(args.seeds)} seeds, {args.steps} steps "
              "(test split, %, mean ± std over seeds)"), ""]
    head = ["method", *(f"mIoU {d}" for d in DATASETS), *(f"IoU {c}" for c in CONFLICTS), "IoU conflict (mean)",
            *(f"p({c})" for c in CONFLICTS), "mIoU unseen"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        rs = results[arm]
        cells = [fmt([r[f"miou_{d}"] for r in rs]) for d in DATASETS]
        cells += [fmt([r[f"iou_{c}"] for r in rs]) for c in CONFLICTS]
        cells += [fmt([r["iou_conflict_mean"] for r in rs])]
        cells += [fmt([r[f"p_{c}"] for r in rs]) for c in CONFLICTS]
        cells += [fmt([r["miou_unseen"] for r in rs])]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    cr = results.get("bce_null+cr", [])
    if cr and "relations" in cr[0]:
        lines += ["", "Relations found by the statistics pass (per seed): "
                  + "; ".join(f"{r['relations']} found, {r['true_relations']} of {r['true_possible']} true ones"
                              for r in cr)]
    if {"ce", "bce", "bce_null", "bce_null+cr"} <= set(arms):
        mean = lambda arm, key: mean_std([r[key] for r in results[arm]])[0]
        lines += ["", "Expected direction (spec): CE and plain BCE < BCE+null <= BCE+null+C-R:"]
        for key, label in (("iou_conflict_mean", "conflict IoU"), ("miou_unseen", "unseen mIoU")):
            ce, bce, null, cr_ = (mean(a, key) for a in ("ce", "bce", "bce_null", "bce_null+cr"))
            ok1, ok2 = max(ce, bce) < null, null <= cr_
            lines.append(f"- {label}: max(CE, BCE) {100 * max(ce, bce):.1f} < BCE+null {100 * null:.1f}: "
                         f"{'yes' if ok1 else 'no'}; BCE+null <= +C-R {100 * cr_:.1f}: {'yes' if ok2 else 'no'}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=250, help="total steps per arm (UniSeg: 75%% stage 1, 25%% stage 2)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--run-root", default="runs/uniseg_label_shift")
    ap.add_argument("--out", default="runs/uniseg_label_shift.json")
    ap.add_argument("--quick", action="store_true", help="one seed, 40 steps")
    ap.add_argument("override", nargs="*", help="extra config overrides for every arm (key=value)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = args.seeds[:1], 40
    logging.getLogger("medley").setLevel(logging.WARNING)

    results: dict[str, list[dict]] = {}
    t0 = time.time()
    for seed in args.seeds:
        for arm in args.arms:
            r = run_arm(arm, seed, args)
            results.setdefault(arm, []).append(r)
            extra = f" relations {r['relations']} ({r['true_relations']} true)" if "relations" in r else ""
            print(f"[{time.time() - t0:6.0f}s] seed={seed} {arm:12s} " + " ".join(
                f"{k}={100 * v:.1f}" for k, v in r.items()
                if isinstance(v, float) and not math.isnan(v) and k != "wall_s") + extra, flush=True)
    text = report(results, args)
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"\nraw results: {args.out}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
