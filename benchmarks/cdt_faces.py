"""CDT on real faces: four small face sets as domains with disjoint identities, leave one out.

Domains (``data=faces``, the ``shared`` preset over ``../shared/data``): ``lfw`` (LFW deep-funneled,
158 people), ``orl`` (40), ``yale`` (15), ``eyaleb`` (Extended Yale B, 38), at 32×32 grey.
Each arm is one ``medley train experiment=cdt_faces`` run (``configs/experiment/cdt_faces.yaml``
pins everything: first order, one sampled (i, j) pair per step, ``normalize=l2_trace``, 300 steps)
with the held-out domain left out of training (``data.holdout_domain``):
  face_cosface : CosFace on the pooled source domains;
  cdt_meta     : Algorithm 1 without the CDT term;
  cdt          : Algorithm 1.

Evaluation on the held-out domain, defined for small domains: **every** image of that domain
(its identities are all unseen, whichever prepared split holds them), **all** pairs of them,
cosine similarity of the flip-concatenated embedding; pairs of identical images (Yale ships
byte-identical files) are left out and masked from the rank-1 gallery. TAR@FAR 1e-3/1e-2/1e-1,
ROC-AUC, leave-one-out rank-1, and 10-fold verification accuracy (folds drawn over pairs, each
fold's threshold fitted on the other nine, balanced over genuine/impostor pairs). The ROC of
every run is written next to the results for plotting. Also reported: the fraction of active
CDT hinges and mean d²₊ / d²₋ after step 100.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdt_faces.py            # 4 folds × 3 seeds × 3 arms
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdt_faces.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cdt_bench import diagnostics, fmt, markdown
from framework.compose import compose
from framework.hooks import Hook
from framework.metrics.verification import Verification

DOMAINS = ("lfw", "orl", "yale", "eyaleb")
ARMS = ("face_cosface", "cdt_meta", "cdt")
COLUMNS = [("tar@far=0.001", "TAR@1e-3"), ("tar@far=0.01", "TAR@1e-2"), ("tar@far=0.1", "TAR@1e-1"),
           ("auc", "AUC"), ("rank1", "rank-1"), ("acc", "10-fold acc")]


class HeldOutDomain(Hook):
    """After training: verification over every image of the held-out domain, from all splits."""

    def __init__(self, domain: str, roc_path: Path | None = None):
        self.domain, self.roc_path, self.metrics = domain, roc_path, {}

    def after_fit(self, trainer, summary: dict) -> None:
        data, algorithm = trainer.data, trainer.algorithm
        model = trainer.strategy.unwrap(trainer.model).eval()
        index = list(data.info.extra["domains"]).index(self.domain)
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
        uid_all = torch.cat(uid)
        first: dict[str, int] = {}
        twins = []
        for u, d in zip(uid_all.tolist(), digests):
            if d in first:
                twins.append([first[d], u])
            else:
                first[d] = u
        metric = Verification(exclude=torch.tensor(twins, dtype=torch.long).reshape(-1, 2))
        metric.update(torch.cat(emb), torch.cat(who), uid_all)
        self.metrics = metric.compute()
        self.metrics.update(images=float(len(uid_all)), identical_pairs=float(len(twins)))
        if self.roc_path is not None:
            metric.save_roc(self.roc_path)


def run(arm: str, held_out: str, seed: int, args) -> dict[str, float]:
    from framework.run import train

    cfg = compose(["experiment=cdt_faces", f"algorithm={arm}", f"data.holdout_domain={held_out}",
                   f"trainer.seed={seed}", f"trainer.max_steps={args.steps}", f"paths.run_root={args.run_root}",
                   "logger.progress=off", "logger.tensorboard=false", *args.overrides])
    hook = HeldOutDomain(held_out, Path(args.out).parent / "cdt_faces_roc" / f"{held_out}-{arm}-seed{seed}.json")
    summary = train(cfg, hooks=[hook])
    return {**hook.metrics, "wall_s": summary["wall_s"], **diagnostics(Path(summary["run_dir"]), min(100, args.steps // 3))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--held-out", nargs="+", default=list(DOMAINS))
    ap.add_argument("--quick", action="store_true", help="one seed, 60 steps, one held-out domain")
    ap.add_argument("--out", default="runs/cdt_faces.json")
    ap.add_argument("--run-root", default=os.environ.get("MEDLEY_RUNS", "runs"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps, args.held_out = args.seeds[:1], 60, args.held_out[:1]
    torch.set_num_threads(1)
    import logging

    logging.getLogger("medley").setLevel(logging.WARNING)

    results: dict[str, dict[str, list[dict]]] = {}
    t0 = time.time()
    for held in args.held_out:
        for seed in args.seeds:
            for arm in args.arms:
                r = run(arm, held, seed, args)
                results.setdefault(held, {}).setdefault(arm, []).append(r)
                print(f"[{time.time() - t0:6.0f}s] held-out={held:6s} seed={seed} {arm:12s} "
                      + " ".join(f"{short}={r[key]:.3f}" for key, short in COLUMNS)
                      + f" hinge={r['hinge_active']:.2f} d2+={r['d2_pos']:.3g} d2-={r['d2_neg']:.3g}"
                      + f" images={r['images']:.0f} ({r['wall_s']:.0f}s)", flush=True)
    report(results, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {args.out}; ROC curves: {Path(args.out).parent / 'cdt_faces_roc'}; "
          f"total {time.time() - t0:.0f}s")


def report(results: dict, args) -> None:
    print(f"\n### CDT on faces, leave one domain out: {len(args.seeds)} seeds, {args.steps} steps "
          "(mean ± std over seeds)\n")
    rows = []
    for held in results:
        for arm in args.arms:
            rs = results[held][arm]
            rows.append([held, arm] + [fmt([r[k] for r in rs]) for k, _ in COLUMNS]
                        + [fmt([r["hinge_active"] for r in rs], 2),
                           f"{fmt([r['d2_pos'] for r in rs], 2)} / {fmt([r['d2_neg'] for r in rs], 2)}"])
    print(markdown(["held-out", "method"] + [c for _, c in COLUMNS] + ["hinge active", "d²₊ / d²₋"], rows))

    print("\nMean over held-out domains (per seed, then mean ± std over seeds):\n")
    rows = []
    for arm in args.arms:
        per_seed = {k: [float(np.mean([results[h][arm][s][k] for h in results])) for s in range(len(args.seeds))]
                    for k, _ in COLUMNS}
        rows.append([arm] + [fmt(per_seed[k]) for k, _ in COLUMNS])
    print(markdown(["method"] + [c for _, c in COLUMNS], rows))
    if {"cdt", "cdt_meta"} <= set(args.arms):
        diffs = [results[h]["cdt"][s]["auc"] - results[h]["cdt_meta"][s]["auc"]
                 for h in results for s in range(len(args.seeds))]
        wins = sum(d > 0 for d in diffs)
        print(f"\nCDT − meta AUC over {len(diffs)} (domain, seed) runs: mean {np.mean(diffs):+.4f}, "
              f"CDT higher in {wins}/{len(diffs)}")


if __name__ == "__main__":
    main()
