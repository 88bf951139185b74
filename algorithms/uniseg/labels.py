"""The unified label space of several segmentation datasets, built from the data manifest.

Unified classes are the alphabetically sorted union of the training datasets' class *names*;
only identical names merge (``digit`` and ``digit_3`` stay two classes). Each dataset — the
unseen ones too — gets a class mask ``m_d`` over the unified space (the names it defines that
exist in the union); evaluation of dataset ``d`` restricts the argmax to ``m_d`` and scores
its classes in its own order, and its classes missing from the union are void.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LabelSpace:
    names: list[str]  # unified classes, sorted
    datasets: list[str]  # every dataset; its index is the batch's ``domain`` id
    training: list[str]  # the datasets whose names form the union
    spaces: dict[str, list[str]]  # dataset -> its class names, in its own order
    data_classes: list[str]  # the names the stored label ids index (the data's own unified order)

    @classmethod
    def from_manifest(cls, extra: dict[str, Any]) -> LabelSpace:
        """From ``extra``: ``datasets``, ``label_spaces``, ``unseen_datasets`` and the stored id order
        (``dense.seg.classes`` or ``unified``)."""
        missing = [k for k in ("datasets", "label_spaces") if k not in extra]
        if missing:
            raise ValueError(f"the dataset's manifest has no extra.{missing[0]}: UniSeg needs per-dataset label "
                             f"spaces (extra.datasets, extra.label_spaces), e.g. data=seg_label_shift")
        datasets = list(extra["datasets"])
        spaces = {d: list(extra["label_spaces"][d]) for d in datasets}
        unseen = set(extra.get("unseen_datasets", []))
        training = [d for d in datasets if d not in unseen]
        data_classes = list((extra.get("dense", {}).get("seg", {}) or {}).get("classes") or extra.get("unified", []))
        return cls(unified_names(spaces[d] for d in training), datasets, training, spaces, data_classes)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def eval_classes(self, dataset: str) -> list[str]:
        """The classes dataset ``dataset`` is scored on: its names that exist in the union."""
        return [n for n in self.spaces[dataset] if n in self.names]

    def class_mask(self) -> torch.Tensor:
        """``m[d, k]`` = unified class k is in dataset d's space (bool ``[D, K]``)."""
        m = torch.zeros(len(self.datasets), self.num_classes, dtype=torch.bool)
        for d, name in enumerate(self.datasets):
            m[d, [self.names.index(n) for n in self.eval_classes(name)]] = True
        return m

    def to_unified(self) -> torch.Tensor:
        """Lookup: stored label id -> unified index (``-1``: a name outside the union, i.e. void)."""
        if not self.data_classes:
            raise ValueError("the manifest names no stored label order (extra.dense.seg.classes or extra.unified)")
        return torch.tensor([self.names.index(n) if n in self.names else -1 for n in self.data_classes])

    def local_index(self) -> torch.Tensor:
        """``L[d, k]``: position of unified class k in dataset d's scored classes, else ``-1`` (``[D, K]``)."""
        out = torch.full((len(self.datasets), self.num_classes), -1, dtype=torch.long)
        for d, name in enumerate(self.datasets):
            for i, n in enumerate(self.eval_classes(name)):
                out[d, self.names.index(n)] = i
        return out


def unified_names(spaces) -> list[str]:
    """The sorted union of class names: only identical names merge."""
    return sorted({n for space in spaces for n in space})


def lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``table[ids]`` with ``-1`` kept for negative ids (no label)."""
    table = table.to(ids.device)
    return torch.where(ids >= 0, table[ids.clamp(min=0)], torch.full_like(ids, -1))


def restricted_argmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Argmax over the classes each row's dataset defines: ``logits [B, K, ...]``, ``allowed`` bool ``[B, K]``
    → unified indices ``[B, ...]``; a class outside ``allowed`` is never predicted."""
    shape = allowed.shape + (1,) * (logits.dim() - 2)
    return logits.masked_fill(~allowed.view(shape), float("-inf")).argmax(dim=1)
