"""UniSeg's losses and its baselines, over logits ``[B, K, H, W]`` in the unified space.

Every loss is a sum over labelled pixels (and, for the BCE family, over classes) divided by a
number of labelled pixels: by default this batch's; under data parallelism the caller passes
the mean count per rank, so that averaging the ranks' gradients gives the global-batch loss.
Classes are *summed*, not averaged (a pixel of a dataset with many classes carries more negative
loss), as in the authors' code. Labels are unified indices with ``-1`` = void.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labelled(target: torch.Tensor) -> torch.Tensor:
    return target >= 0


def _normalise(total: torch.Tensor, target: torch.Tensor, denominator: torch.Tensor | float | None) -> torch.Tensor:
    if denominator is None:
        denominator = labelled(target).sum()
    if not torch.is_tensor(denominator):
        denominator = torch.tensor(float(denominator), device=total.device)
    return total / denominator.to(total.dtype).clamp(min=1)


def ce_unified(logits: torch.Tensor, target: torch.Tensor, denominator=None) -> torch.Tensor:
    """Softmax cross-entropy over the naively merged space (every unified class competes on every pixel)."""
    total = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
    return _normalise(total, target, denominator)


def bce_masked(logits: torch.Tensor, target: torch.Tensor, class_mask: torch.Tensor | None,
               denominator=None) -> torch.Tensor:
    """Class-independent BCE: ``Σ_i valid_i Σ_k m_d(i)[k] · BCE(z_ik, 1[k = y_i]) / #labelled``.

    ``class_mask`` (bool/float ``[B, K]``, the row's dataset's classes) is UniSeg's "null": a class
    outside the pixel's own label space gets no loss, neither positive nor negative. ``None``: plain
    BCE, every class is a negative wherever it is not the label."""
    k = logits.shape[1]
    valid = labelled(target)
    onehot = F.one_hot(target.clamp(min=0), k).permute(0, 3, 1, 2).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    weight = valid.unsqueeze(1).to(logits.dtype)
    if class_mask is not None:
        weight = weight * class_mask.to(logits.dtype)[:, :, None, None]
    return _normalise((loss * weight).sum(), target, denominator)


def class_relational_bce(logits: torch.Tensor, target: torch.Tensor, relation: torch.Tensor,
                         denominator=None) -> torch.Tensor:
    """Stage 2: pixel i of dataset d labelled c takes the target row ``t = T_d[c]`` in {1, 0, -1}:
    1 for c and its related classes, 0 for the rest of d's classes, -1 (no loss) elsewhere.

    ``relation``: int ``[B, K, K]``, each row's dataset's target matrix ``T_d``."""
    b, k, h, w = logits.shape
    valid = labelled(target)
    rows = torch.gather(relation.to(logits.device), 1,
                        target.clamp(min=0).reshape(b, h * w, 1).expand(b, h * w, k).long())  # [B, HW, K]
    rows = rows.permute(0, 2, 1).reshape(b, k, h, w)
    weight = ((rows != -1) & valid.unsqueeze(1)).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, rows.clamp(min=0).to(logits.dtype), reduction="none")
    return _normalise((loss * weight).sum(), target, denominator)
