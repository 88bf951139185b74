"""Class relations between datasets, measured once after stage 1 and turned into stage-2 targets.

Statistics: for every dataset d and ground-truth class c, the mean logit vector over all
labelled training pixels of (d, c), in eval mode without gradients; ``p̄_{d,c} = σ(mean logit)``
(with a cosine head of scale s that is ``σ(s · mean cosine)``). Sums and pixel counts are
accumulated in float64 and summed over ranks, so every rank — and every world size — derives
the same relations.

Rule (reproduces the authors' released target files): class j ≠ c is related to (d, c) iff
``p̄_{d,c}[j] > p̄_{d,c}[c]`` and ``p̄_{d,c}[j] > τ``: the model scores j above the labelled class
itself, with some confidence. Targets ``T_d[c, j]`` = 1 for c and its related classes, 0 for
d's other classes, −1 (no loss) for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from algorithms.uniseg.labels import lookup


@torch.no_grad()
def accumulate_statistics(net: torch.nn.Module, batches: Iterable[dict], to_unified: torch.Tensor,
                          num_datasets: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (dataset, class): the sum of logit vectors over its labelled pixels ``[D, K, K]`` and the pixel
    count ``[D, K]`` (float64, this rank's rows only; padding rows, ``mask`` False, are left out)."""
    d_k = num_datasets * num_classes
    sums = torch.zeros(d_k, num_classes, dtype=torch.float64)
    counts = torch.zeros(d_k, dtype=torch.float64)
    for batch in batches:
        logits = net(batch["image"]).float()
        target = lookup(to_unified, batch["dense"]["seg"])
        rows = batch.get("mask", torch.ones(len(target), dtype=torch.bool, device=target.device))
        valid = (target >= 0) & rows[:, None, None]
        cell = (batch["domain"][:, None, None] * num_classes + target)[valid]  # (dataset, class) per pixel
        z = logits.permute(0, 2, 3, 1)[valid].double()  # [N, K]
        sums = sums.to(z.device).index_add_(0, cell, z)
        counts = counts.to(z.device).index_add_(0, cell, torch.ones_like(cell, dtype=torch.float64))
    return sums.view(num_datasets, num_classes, num_classes), counts.view(num_datasets, num_classes)


def measure(net: torch.nn.Module, batches: Iterable[dict], to_unified: torch.Tensor, num_datasets: int,
            num_classes: int, all_reduce: Callable[[torch.Tensor, str], torch.Tensor], device) -> dict:
    """Statistics over every rank's rows: ``mean_logit [D, K, K]`` and ``pixels [D, K]``."""
    was_training = net.training
    net.eval()
    try:
        sums, counts = accumulate_statistics(net, batches, to_unified, num_datasets, num_classes)
    finally:
        net.train(was_training)
    sums, counts = all_reduce(sums.to(device), "sum"), all_reduce(counts.to(device), "sum")
    return {"mean_logit": (sums / counts.clamp(min=1)[..., None]).cpu(), "pixels": counts.cpu()}


def related(mean_prob: torch.Tensor, tau: float) -> torch.Tensor:
    """``R[d, c, j]``: j ≠ c scores above c itself on (d, c)'s pixels, and above ``tau`` (bool ``[D, K, K]``)."""
    k = mean_prob.shape[-1]
    own = torch.diagonal(mean_prob, dim1=1, dim2=2).unsqueeze(-1)  # p̄_{d,c}[c]
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    return (mean_prob > own) & (mean_prob > tau) & off_diagonal


def relation_targets(mean_prob: torch.Tensor, pixels: torch.Tensor, class_mask: torch.Tensor,
                     tau: float) -> torch.Tensor:
    """Target rows ``T [D, K, K]`` (int8, {1, 0, −1}); a (d, c) without pixels relates to nothing."""
    d, k, _ = mean_prob.shape
    rel = related(mean_prob, tau) & (pixels > 0).unsqueeze(-1)
    own = torch.eye(k, dtype=torch.bool).expand(d, k, k)
    inside = class_mask.bool().unsqueeze(1).expand(d, k, k)
    zero = torch.zeros((), dtype=torch.int8)
    return torch.where(own | rel, torch.ones((), dtype=torch.int8), torch.where(inside, zero, zero - 1))


def relation_list(targets: torch.Tensor, datasets: list[str], names: list[str], pixels: torch.Tensor) -> list[dict]:
    """The found relations as ``{dataset, class, related: [names]}`` (only rows with pixels)."""
    out = []
    for d, dname in enumerate(datasets):
        for c, cname in enumerate(names):
            if pixels[d, c] <= 0:
                continue
            rel = [names[j] for j in range(len(names)) if j != c and targets[d, c, j] == 1]
            out.append({"dataset": dname, "class": cname, "related": rel})
    return out


def relation_table(state: dict, datasets: list[str], names: list[str], tau: float) -> str:
    """A readable Markdown table: one row per (dataset, class) with pixels, its own p̄ and its relations."""
    targets, pixels = state["targets"], state["pixels"]
    prob = state["mean_logit"].sigmoid()
    n_rel = int(sum(len(r["related"]) for r in relation_list(targets, datasets, names, pixels)))
    lines = [f"# Class relations measured after stage 1 (tau = {tau:.4g}; {n_rel} found)", "",
             ("Related: the model scores j above the labelled class itself and above tau on that class's "
              "pixels (mean probability p̄ = sigmoid of the mean logit). Strongest other class shown for every row."),
             "", "| dataset | class | pixels | p̄(class) | strongest other (p̄) | related |", "|---|---|---|---|---|---|"]
    for d, dname in enumerate(datasets):
        for c, cname in enumerate(names):
            if pixels[d, c] <= 0:
                continue
            others = prob[d, c].clone()
            others[c] = -1.0
            j = int(others.argmax())
            rel = [f"{names[i]} ({prob[d, c, i]:.2f})" for i in range(len(names)) if i != c and targets[d, c, i] == 1]
            lines.append(f"| {dname} | {cname} | {int(pixels[d, c])} | {prob[d, c, c]:.3f} | "
                         f"{names[j]} ({prob[d, c, j]:.3f}) | {', '.join(rel) or '—'} |")
    return "\n".join(lines) + "\n"
