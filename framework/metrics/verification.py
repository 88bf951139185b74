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
  on the other folds. Accuracy is *balanced* (mean of TPR and TNR), which equals plain accuracy
  on LFW's balanced pairs and stays meaningful when all pairs are used (mostly negatives).
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


def best_threshold(scores: np.ndarray, is_pos: np.ndarray) -> float:
    """The threshold (accept when score > t) with the highest balanced accuracy on these pairs."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_pos[order].astype(np.float64)
    n_pos, n_neg = max(y.sum(), 1.0), max(len(y) - y.sum(), 1.0)
    last = np.r_[np.diff(s) != 0, True]
    tpr = np.cumsum(y)[last] / n_pos  # accepting every score ≥ s[last]
    tnr = 1.0 - np.cumsum(1 - y)[last] / n_neg
    cand = s[last]
    bal = np.r_[0.5, (tpr + tnr) / 2.0]  # index 0: accept nothing
    best = int(np.argmax(bal))
    if best == 0:
        return float(cand[0])
    nxt = cand[best] if best < len(cand) else cand[-1] - 1.0
    return float((cand[best - 1] + nxt) / 2.0)


def kfold_accuracy(scores: np.ndarray, is_pos: np.ndarray, folds: np.ndarray, k: int) -> tuple[float, float]:
    """Mean and std over folds of balanced accuracy with the threshold fitted on the other folds."""
    accs = []
    for f in range(k):
        test = folds == f
        if not test.any() or not is_pos[test].any() or is_pos[test].all():
            continue
        t = best_threshold(scores[~test], is_pos[~test])
        pred, y = scores[test] > t, is_pos[test].astype(bool)
        accs.append(0.5 * (np.mean(pred[y]) + np.mean(~pred[~y])))
    if not accs:
        return float("nan"), float("nan")
    return float(np.mean(accs)), float(np.std(accs))


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
                 fars: tuple[float, ...] = FARS, folds: int = 10, seed: int = 0):
        """Args:
            pairs: optional [P, 3] long tensor ``(id_a, id_b, same)``; default: all pairs.
            exclude: optional [M, 2] sample-id pairs never scored (nor used as gallery mates).
        """
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
        folds = np.random.default_rng(self.seed).integers(0, self.folds, size=len(scores))
        out["acc"], out["acc_std"] = kfold_accuracy(scores, same, folds, self.folds)
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
