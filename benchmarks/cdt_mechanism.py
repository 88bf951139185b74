"""CDT closed-set miniature (method spec §3.2): digits as identities, synthetic domains,
leave one domain out.

Data: scikit-learn's 1,797 real 8×8 digits, scaled to [0, 1] and upsampled to 16×16 (bilinear).
Domains are per-image renderings with their own RNG: ``clean``, ``blur`` (Gaussian, σ ~ U(1, 1.5)),
``rot`` (±U(25°, 40°)), ``noise`` (+N(0, 0.25), clipped). For each held-out domain t in
{rot, noise, blur} the other three train: 70% of the images form the training pool, cut into
three disjoint parts (one per training domain, rendered in it); the other 30% are the test
images, rendered in t. The 10 digits are the identities (closed set, unseen images, unseen domain).

Methods (the same ``cdt`` plugin, different configs; 300 outer steps, per-domain P×K = 8×8
episodes (32 triplets), s = 16, m = 0.35, ρ = 0.5, τ = 1, λ = 0.7, α = 0.01, first order, one
random (i, j) pair per step, Adam 1e-3):
  cosface  : pooled batches of all three domains, CosFace only (``mode=pooled``, no triplet);
  meta     : Algorithm 1 without the CDT term;
  cdt      : Algorithm 1 with ``normalize=l2_trace``;
  cdt_raw  : Algorithm 1, the paper's raw features (``normalize=none``).
Network: the spec's conv16 → conv32/2 → conv32/2 (``--backbone plain``) or Medley's ResNet
[16, 32, 32] (``--backbone resnet``); both give a 32×4×4 f_r, no normalisation layers.
Metric: verification over all pairs of test embeddings (cosine): TAR@FAR 1e-2 / 1e-1, ROC-AUC.

Pass criteria (spec): mean AUC over the folds cdt ≥ cosface + 0.01; cdt ≥ meta − 0.01; hinge
active on 20-80% of triplets; mean d²₋ > d²₊ after step 100. CDT − meta is reported, not gated.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdt_mechanism.py              # 3 seeds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cdt_mechanism.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algorithms._face.episodes import MemoryEpisodes
from benchmarks.cdt_bench import fmt, make_config, markdown, mean_std, run_once

DOMAINS = ("clean", "blur", "rot", "noise")
HELD_OUT = ("rot", "noise", "blur")
METHODS = {
    "cosface": {"mode": "pooled", "triplet_weight": 0.0, "use_cdt": False},
    "meta": {"mode": "meta", "use_cdt": False},
    "cdt": {"mode": "meta", "use_cdt": True, "normalize": "l2_trace"},
    "cdt_raw": {"mode": "meta", "use_cdt": True, "normalize": "none"},
}
COMMON = {"pairs_per_step": 1, "alpha": 0.01, "lam": 0.7, "second_order": False, "tau": 1.0, "rho": 0.5,
          "scale": 16.0, "margin": 0.35, "embedding_dim": 64, "triplet_dim": 32, "flip_test": False}


# Both give a 32x4x4 feature map (f_r) on 16x16 inputs, without normalisation layers.
BACKBONES = {
    "plain": {"name": "plain", "widths": [16, 32, 32], "norm": "none"},
    "resnet": {"name": "resnet", "widths": [16, 32, 32], "blocks_per_stage": 1, "norm": "none", "stem_stride": 1},
}


def digits16() -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    return np.stack([ndimage.zoom(im, 2, order=1) for im in x]).clip(0, 1), d.target.astype(np.int64)


def render(images: np.ndarray, domain: str, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    out = []
    for im in images:
        if domain == "blur":
            im = ndimage.gaussian_filter(im, rng.uniform(1.0, 1.5))
        elif domain == "rot":
            im = ndimage.rotate(im, rng.choice([-1, 1]) * rng.uniform(25, 40), reshape=False, order=1)
        elif domain == "noise":
            im = im + rng.normal(0, 0.25, im.shape)
        out.append(np.clip(im, 0, 1))
    return np.stack(out).astype(np.float32)


def fold_data(held_out: str, seed: int, p: int, k: int) -> MemoryEpisodes:
    x, y = digits16()
    rng = np.random.default_rng([seed, DOMAINS.index(held_out)])
    order = rng.permutation(len(x))
    n_train = int(0.7 * len(x))
    sources = [d for d in DOMAINS if d != held_out]
    parts = np.array_split(order[:n_train], len(sources))
    tensor = lambda a: torch.from_numpy(a)[:, None]
    train = {d: (tensor(render(x[rows], d, rng)), torch.from_numpy(y[rows])) for d, rows in zip(sources, parts)}
    test = order[n_train:]
    evals = {"test": (tensor(render(x[test], held_out, rng)), torch.from_numpy(y[test]))}
    return MemoryEpisodes(train, evals, num_identities=10, p=p, k=k, seed=seed, name=f"digits-minus-{held_out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--held-out", nargs="+", default=list(HELD_OUT))
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--backbone", choices=sorted(BACKBONES), default="plain",
                    help="plain: the spec's conv16 -> conv32/2 -> conv32/2; resnet: Medley's ResNet [16, 32, 32]")
    ap.add_argument("--quick", action="store_true", help="one seed, 60 steps, one fold")
    ap.add_argument("--out", default="runs/cdt_mechanism.json")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps, args.held_out = args.seeds[:1], 60, args.held_out[:1]
    torch.set_num_threads(1)

    results: dict[str, dict[str, list[dict]]] = {}
    t0 = time.time()
    for held in args.held_out:
        for seed in args.seeds:
            for method in args.methods:
                data = fold_data(held, seed, args.p, args.k)
                cfg = make_config(
                    {**COMMON, **METHODS[method]},
                    model=BACKBONES[args.backbone],
                    trainer={"max_steps": args.steps, "seed": seed},
                    optim={"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "constant"},
                    data_name=data.info.name)
                r = run_once(cfg, data, after_steps=min(100, args.steps // 3))
                results.setdefault(held, {}).setdefault(method, []).append(r)
                print(f"[{time.time() - t0:6.0f}s] held-out={held} seed={seed} {method:8s} "
                      f"auc={r['auc']:.3f} tar@1e-2={r['tar@far=0.01']:.3f} tar@1e-1={r['tar@far=0.1']:.3f} "
                      f"hinge={r['hinge_active']:.2f} d2+={r['d2_pos']:.3g} d2-={r['d2_neg']:.3g} "
                      f"({r['wall_s']:.0f}s)", flush=True)
    report(results, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {args.out}; total {time.time() - t0:.0f}s")


def report(results: dict, args) -> None:
    methods = [m for m in args.methods if all(m in results[h] for h in results)]
    print(f"\n### CDT mechanism miniature: {getattr(args, 'backbone', 'resnet')} backbone, {len(args.seeds)} seeds, "
          f"{args.steps} steps "
          "(TAR@1e-2 / TAR@1e-1 / AUC, mean ± std over seeds)\n")
    rows = []
    for held in results:
        for m in methods:
            rs = results[held][m]
            rows.append([held, m, fmt([r["tar@far=0.01"] for r in rs]), fmt([r["tar@far=0.1"] for r in rs]),
                         fmt([r["auc"] for r in rs]), fmt([r["hinge_active"] for r in rs], 2),
                         fmt([r["d2_pos"] for r in rs], 3), fmt([r["d2_neg"] for r in rs], 3)])
    print(markdown(["held-out", "method", "TAR@1e-2", "TAR@1e-1", "AUC", "hinge active", "d²₊", "d²₋"], rows))

    # mean AUC over folds, per seed, then mean ± std over seeds
    def fold_mean(m: str) -> list[float]:
        return [float(np.mean([results[h][m][s]["auc"] for h in results])) for s in range(len(args.seeds))]

    print("\n| method | mean AUC over folds |\n|---|---|")
    for m in methods:
        print(f"| {m} | {fmt(fold_mean(m))} |")
    if not {"cosface", "meta", "cdt"} <= set(methods):
        return
    cdt, cos, meta = (mean_std(fold_mean(m))[0] for m in ("cdt", "cosface", "meta"))
    hinge = [r["hinge_active"] for h in results for r in results[h]["cdt"]]
    d_pos = [r["d2_pos"] for h in results for r in results[h]["cdt"]]
    d_neg = [r["d2_neg"] for h in results for r in results[h]["cdt"]]
    checks = {
        f"mean AUC cdt {cdt:.3f} >= cosface {cos:.3f} + 0.01": cdt >= cos + 0.01,
        f"mean AUC cdt {cdt:.3f} >= meta {meta:.3f} - 0.01": cdt >= meta - 0.01,
        f"hinge active on {np.mean(hinge):.0%} of triplets (20-80%)": 0.2 <= np.mean(hinge) <= 0.8,
        f"mean d2- {np.mean(d_neg):.3f} > d2+ {np.mean(d_pos):.3f} after step 100": np.mean(d_neg) > np.mean(d_pos),
    }
    print("\nPass criteria (spec §3.2):")
    for text, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {text}")
    print(f"- reported, not gated: CDT - meta = {cdt - meta:+.3f} mean AUC")


if __name__ == "__main__":
    main()
