"""Identification accuracy broken down by the levels of each variation factor.

Leave-one-out rank-1 over the evaluated rows (each row whose person has another row is a probe
against every other row; a hit when its nearest neighbour by cosine is the same person), with
the probes grouped by their level of each factor. The majority level of a factor is its most
frequent level in training; the others are minority levels. Reported, besides ``acc`` over all
probes: ``acc_{factor}_{level}``, ``gap_{factor}`` = acc(majority) − acc(worst minority level),
``mean_gap`` over factors and ``worst_minority`` (the lowest minority-level accuracy of any
factor). Rows are gathered across ranks and sorted by sample id, so the values do not depend on
the world size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from framework.metrics.base import Metric


class GroupedRank1(Metric):
    def __init__(self, factors: list[str], levels: list[int], majority: list[int],
                 exclude: torch.Tensor | None = None):
        super().__init__()
        self.factors, self.levels, self.majority, self.exclude = list(factors), list(levels), list(majority), exclude
        self.add_state("embeddings", torch.zeros(0), reduce="cat")
        self.add_state("persons", torch.zeros(0, dtype=torch.long), reduce="cat")
        self.add_state("factor_levels", torch.zeros(0, len(self.factors), dtype=torch.long), reduce="cat")
        self.add_state("ids", torch.zeros(0, dtype=torch.long), reduce="cat")

    def update(self, embeddings: torch.Tensor, persons: torch.Tensor, levels: torch.Tensor, ids: torch.Tensor,
               mask: torch.Tensor | None = None) -> None:
        keep = persons >= 0 if mask is None else mask & (persons >= 0)
        emb = embeddings[keep].detach().float().cpu()
        self.embeddings = emb if self.embeddings.numel() == 0 else torch.cat([self.embeddings, emb])
        self.persons = torch.cat([self.persons, persons[keep].cpu()])
        self.factor_levels = torch.cat([self.factor_levels, levels[keep].cpu()])
        self.ids = torch.cat([self.ids, ids[keep].cpu()])

    def hits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hit per row, probe mask, levels), rows in sample-id order."""
        order = torch.argsort(self.ids)
        emb = F.normalize(self.embeddings[order].reshape(len(order), -1).double(), dim=1)
        persons, ids, levels = self.persons[order], self.ids[order], self.factor_levels[order]
        sim = emb @ emb.T
        sim.fill_diagonal_(-math.inf)
        if self.exclude is not None and len(self.exclude):
            pos = {int(i): r for r, i in enumerate(ids.tolist())}
            for a, b in self.exclude.tolist():
                if a in pos and b in pos:
                    sim[pos[a], pos[b]] = sim[pos[b], pos[a]] = -math.inf
        same = persons[:, None] == persons[None, :]
        probe = (same & torch.isfinite(sim)).any(1)
        hit = persons[sim.argmax(1)] == persons
        return hit, probe, levels

    def compute(self) -> dict[str, float]:
        if len(self.ids) < 2:
            return {"acc": math.nan}
        hit, probe, levels = self.hits()
        out = {"acc": float(hit[probe].double().mean()) if probe.any() else math.nan}
        gaps, minority = [], []
        for k, name in enumerate(self.factors):
            accs = {}
            for level in range(self.levels[k]):
                rows = probe & (levels[:, k] == level)
                accs[level] = float(hit[rows].double().mean()) if rows.any() else math.nan
                out[f"acc_{name}_{level}"] = accs[level]
            others = [a for lv, a in accs.items() if lv != self.majority[k] and not math.isnan(a)]
            major = accs.get(self.majority[k], math.nan)
            if others and not math.isnan(major):
                out[f"gap_{name}"] = major - min(others)
                gaps.append(out[f"gap_{name}"])
            minority += others
        out["mean_gap"] = sum(gaps) / len(gaps) if gaps else math.nan
        out["worst_minority"] = min(minority) if minority else math.nan
        return out
