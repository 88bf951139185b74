"""Face verification and identification over a whole split, identical at any world size.

Embeddings, identities and sample ids are ``cat`` states: every rank keeps its rows, ``reduce``
gathers them, and ``compute`` sorts by sample id before scoring, so pair enumeration, fold
assignment and tie order do not depend on how rows were dealt to ranks.

Pairs are either given (``pairs``: sample-id pairs with a same/different flag, LFW-style) or
**all** pairs of the evaluated samples — the better estimate on small test domains. Pairs in
``exclude`` (e.g. byte-identical images, which would be trivially "genuine") are dropped from
verification and masked out of the identification gallery.

Metrics (cosine similarity of L2-normalised embeddings):
- ``tar@far=1e-3|1e-2|1e-1``: the largest TAR whose threshold lets at most ⌊FAR·N_neg⌋
  negatives through (strictly greater scores are accepted);
- ``auc``: ROC-AUC (Mann-Whitney, ties count half);
- ``rank1``: leave-one-out identification: each sample whose identity has another sample is a
  probe against all other samples; a hit when its nearest neighbour has its identity;
- ``acc`` / ``acc_std``: k-fold verification accuracy: each fold's threshold maximises accuracy
  on the other folds (exact integer counts; ties go to the strictest threshold). By default
  folds are drawn at random over pairs and accuracy is *balanced* (mean of TPR and TNR), which
  stays meaningful when all pairs are used (mostly negatives). ``protocol="lfw"`` is LFW's
  standard protocol instead: 10 contiguous folds of a given balanced pair list, plain accuracy,
  so figures compare with published ones.
``curve`` keeps the ROC after ``compute`` (``save_roc`` writes it for plotting).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from framework.metrics.base import Metric

FARS = (1e-3, 1e-2, 1e-1)
PROTOCOLS = ("random", "lfw")


# ------------------------------------------------------------------------ pure functions
def tar_at_far(pos: np.ndarray, neg: np.ndarray, far: float) -> float:
    """TAR at the threshold that accepts at most ⌊far·len(neg)⌋ negatives (score > threshold)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    k = int(np.floor(far * len(neg) + 1e-9))
    if k >= len(neg):
        return 1.0
    threshold = np.sort(neg)[::-1][k]
    return float(np.mean(pos > threshold))


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + ½ P(tie), from average ranks."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    avg_rank = (upper - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each score
    u = avg_rank[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def roc_curve(pos: np.ndarray, neg: np.ndarray) -> dict[str, list[float]]:
    """FAR/TAR at every distinct threshold (accept when score ≥ threshold), descending."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_pos[order]
    last = np.r_[np.diff(s) != 0, True]  # the last row of each run of equal scores
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return {"threshold": s[last].tolist(), "tar": (tp / max(len(pos), 1)).tolist(),
            "far": (fp / max(len(neg), 1)).tolist()}


def best_threshold(scores: np.ndarray, is_pos: np.ndarray, balanced: bool = True) -> float:
    """The threshold (accept when score > t) with the highest accuracy on these pairs.

    Accuracy is balanced (mean of TPR and TNR) unless ``balanced`` is off (plain accuracy, LFW's
    rule on its balanced folds). Candidates are compared as exact integers (TP·N_neg + TN·N_pos,
    or TP + TN), never as rounded ratios. Tie rule: among equally accurate cut points the
    strictest wins (the one accepting the fewest pairs); the returned threshold lies halfway
    between the lowest accepted score and the next lower score.
    """
    order = np.argsort(-scores, kind="stable")
    return _best_cut(scores[order], is_pos[order], balanced)


def _best_cut(s: np.ndarray, is_pos: np.ndarray, balanced: bool) -> float:
    """``best_threshold`` on scores already sorted in descending order."""
    y = is_pos.astype(np.int64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    last = np.r_[np.diff(s) != 0, True]
    tp = np.r_[0, np.cumsum(y)[last]]  # index 0: accept nothing; index c: accept every score ≥ cand[c-1]
    tn = n_neg - np.r_[0, np.cumsum(1 - y)[last]]
    cand = s[last]
    if balanced:
        score = tp * max(n_neg, 1) + tn * max(n_pos, 1)  # ∝ TPR + TNR, exact
    else:
        score = tp + tn
    best = int(np.argmax(score))  # the first maximum: the strictest cut point
    if best == 0:
        return float(cand[0])
    nxt = cand[best] if best < len(cand) else cand[-1] - 1.0
    return float((cand[best - 1] + nxt) / 2.0)


def kfold_accuracy(scores: np.ndarray, is_pos: np.ndarray, folds: np.ndarray, k: int,
                   balanced: bool = True) -> tuple[float, float]:
    """Mean and std over folds of accuracy with the threshold fitted on the other folds
    (balanced accuracy by default; plain accuracy with ``balanced=False``). Scores are sorted
    once; each fold's complement keeps that order, which is its own stable sort."""
    order = np.argsort(-scores, kind="stable")
    s_sorted, y_sorted, f_sorted = scores[order], is_pos[order], folds[order]
    accs = []
    for f in range(k):
        test = folds == f
        if not test.any() or not is_pos[test].any() or is_pos[test].all():
            continue
        train = f_sorted != f
        t = _best_cut(s_sorted[train], y_sorted[train], balanced)
        pred, y = scores[test] > t, is_pos[test].astype(bool)
        accs.append(0.5 * (np.mean(pred[y]) + np.mean(~pred[~y])) if balanced else np.mean(pred == y))
    if not accs:
        return float("nan"), float("nan")
    return float(np.mean(accs)), float(np.std(accs))


def contiguous_folds(n: int, k: int = 10) -> np.ndarray:
    """LFW's fold assignment: the pair list in order, cut into ``k`` contiguous blocks."""
    return np.arange(n) * k // max(n, 1)


def lfw_style_pairs(ids: torch.Tensor, persons: torch.Tensor, folds: int = 10, per_fold: int = 600,
                    seed: int = 0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """A pair list laid out like LFW's View 2 ``pairs.txt``: ``folds`` contiguous blocks, each of
    ``per_fold/2`` genuine then ``per_fold/2`` impostor pairs, drawn without replacement from all
    pairs of the given samples (fewer per fold when a small set has too few genuine pairs).
    Unlike LFW's list, folds are not identity-disjoint. Returns ``[P, 3]`` ``(id_a, id_b, same)``.
    """
    ids, persons = ids.cpu(), persons.cpu()
    a, b = torch.triu_indices(len(ids), len(ids), offset=1)
    same = persons[a] == persons[b]
    if exclude is not None and len(exclude):
        pos = {int(i): r for r, i in enumerate(ids.tolist())}
        blocked = torch.zeros(len(ids), len(ids), dtype=torch.bool)
        for x, y in exclude.tolist():
            if x in pos and y in pos:
                blocked[pos[x], pos[y]] = blocked[pos[y], pos[x]] = True
        keep = ~blocked[a, b]
        a, b, same = a[keep], b[keep], same[keep]
    rng = np.random.default_rng(seed)
    gen, imp = np.flatnonzero(same.numpy()), np.flatnonzero(~same.numpy())
    half = min(per_fold // 2, len(gen) // folds, len(imp) // folds)
    if half == 0:
        raise ValueError(f"lfw_style_pairs: {len(gen)} genuine / {len(imp)} impostor pairs cannot fill "
                         f"{folds} folds with at least one of each")
    gen, imp = rng.permutation(gen)[: half * folds], rng.permutation(imp)[: half * folds]
    rows = []
    for f in range(folds):
        for pick, flag in ((gen, 1), (imp, 0)):
            for r in pick[f * half:(f + 1) * half]:
                rows.append((int(ids[a[r]]), int(ids[b[r]]), flag))
    return torch.tensor(rows, dtype=torch.long)


def rank1_accuracy(sim: torch.Tensor, labels: torch.Tensor, blocked: torch.Tensor | None = None) -> float:
    """Leave-one-out rank-1 identification over a similarity matrix (diagonal excluded)."""
    sim = sim.clone()
    sim.fill_diagonal_(-float("inf"))
    if blocked is not None:
        sim[blocked] = -float("inf")
    same = labels[:, None] == labels[None, :]
    has_mate = ((same & torch.isfinite(sim)).sum(1) > 0)
    if not has_mate.any():
        return float("nan")
    nearest = sim.argmax(dim=1)
    return float((labels[nearest] == labels)[has_mate].double().mean())


# ------------------------------------------------------------------------------ metric
class Verification(Metric):
    def __init__(self, pairs: torch.Tensor | None = None, exclude: torch.Tensor | None = None,
                 fars: tuple[float, ...] = FARS, folds: int = 10, seed: int = 0, protocol: str = "random"):
        """Args:
            pairs: optional [P, 3] long tensor ``(id_a, id_b, same)``; default: all pairs.
            exclude: optional [M, 2] sample-id pairs never scored (nor used as gallery mates).
            protocol: how ``acc`` is computed. ``random``: folds drawn at random over pairs,
                balanced accuracy. ``lfw``: LFW's standard protocol on the given ``pairs`` (e.g.
                ``lfw_style_pairs``): ``folds`` contiguous blocks of the list in its order, each
                block's threshold fitted on the others, plain accuracy.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"Verification: protocol '{protocol}' is not one of {', '.join(PROTOCOLS)}")
        if protocol == "lfw" and pairs is None:
            raise ValueError("Verification: protocol 'lfw' scores a given pair list; pass pairs= "
                             "(e.g. lfw_style_pairs(ids, persons))")
        self.protocol = protocol
        super().__init__()
        self.pairs, self.exclude = pairs, exclude
        self.fars, self.folds, self.seed = tuple(fars), folds, seed
        self.add_state("embeddings", torch.zeros(0), reduce="cat")
        self.add_state("identities", torch.zeros(0, dtype=torch.long), reduce="cat")
        self.add_state("ids", torch.zeros(0, dtype=torch.long), reduce="cat")
        self.curve: dict[str, list[float]] | None = None

    def update(self, embeddings: torch.Tensor, identities: torch.Tensor, ids: torch.Tensor,
               mask: torch.Tensor | None = None) -> None:
        keep = identities >= 0 if mask is None else mask & (identities >= 0)
        emb = embeddings[keep].detach().float().cpu()
        if self.embeddings.numel() == 0:
            self.embeddings = emb
        else:
            self.embeddings = torch.cat([self.embeddings, emb])
        self.identities = torch.cat([self.identities, identities[keep].cpu()])
        self.ids = torch.cat([self.ids, ids[keep].cpu()])

    def _blocked(self, ids: torch.Tensor) -> torch.Tensor | None:
        if self.exclude is None or len(self.exclude) == 0:
            return None
        pos = {int(i): r for r, i in enumerate(ids.tolist())}
        blocked = torch.zeros(len(ids), len(ids), dtype=torch.bool)
        for a, b in self.exclude.tolist():
            if a in pos and b in pos:
                blocked[pos[a], pos[b]] = blocked[pos[b], pos[a]] = True
        return blocked

    def pair_scores(self) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(scores, same-identity flags) of the evaluated pairs, plus the similarity matrix."""
        order = torch.argsort(self.ids)
        emb = F.normalize(self.embeddings[order].reshape(len(order), -1).double(), dim=1)
        labels, ids = self.identities[order], self.ids[order]
        sim = emb @ emb.T
        blocked = self._blocked(ids)
        if self.pairs is None:
            a, b = torch.triu_indices(len(ids), len(ids), offset=1)
            keep = ~blocked[a, b] if blocked is not None else torch.ones(len(a), dtype=torch.bool)
            a, b = a[keep], b[keep]
            same = labels[a] == labels[b]
        else:
            pos = {int(i): r for r, i in enumerate(ids.tolist())}
            rows = [(pos[x], pos[y], s) for x, y, s in self.pairs.tolist() if x in pos and y in pos]
            t = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
            a, b, same = t[:, 0], t[:, 1], t[:, 2].bool()
        return sim[a, b].numpy(), same.numpy(), sim, labels, blocked

    def compute(self) -> dict[str, float]:
        if len(self.ids) < 2:
            return {"auc": float("nan")}
        scores, same, sim, labels, blocked = self.pair_scores()
        pos, neg = scores[same], scores[~same]
        out = {f"tar@far={far:g}": tar_at_far(pos, neg, far) for far in self.fars}
        out["auc"] = roc_auc(pos, neg)
        out["rank1"] = rank1_accuracy(sim, labels, blocked)
        if self.protocol == "lfw":
            folds = contiguous_folds(len(scores), self.folds)
        else:
            folds = np.random.default_rng(self.seed).integers(0, self.folds, size=len(scores))
        out["acc"], out["acc_std"] = kfold_accuracy(scores, same, folds, self.folds,
                                                    balanced=self.protocol != "lfw")
        out["pairs_pos"], out["pairs_neg"] = float(len(pos)), float(len(neg))
        self.curve = roc_curve(pos, neg)
        return out

    def save_roc(self, path: str | Path, max_points: int = 2000) -> None:
        """Write the last computed ROC as JSON, thinned to about ``max_points`` thresholds spread
        evenly in threshold order and in log FAR (so a log-FAR plot keeps its low-FAR end)."""
        if self.curve is None:
            raise RuntimeError("Verification.save_roc: call compute() first")
        far = np.asarray(self.curve["far"])
        n, half = len(far), max(max_points // 2, 1)
        on_log = np.searchsorted(far, np.logspace(-6, 0, half), side="right") - 1
        idx = np.unique(np.r_[np.linspace(0, n - 1, min(n, half)).astype(int), on_log.clip(0, n - 1), n - 1])
        data = {k: [v[i] for i in idx] for k, v in self.curve.items()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
