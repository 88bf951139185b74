"""Task affinity from the frozen anchor by representational similarity (RSA), computed once.

For K images, every stream i and node layer l give a K×K Pearson similarity matrix S^l_i of the
flattened features. D^l(i, j) = ‖S^l_i − S^l_j‖_F, each row divided by its maximum, A^l = 1 − D̃^l,
and A is the mean over layers. Row normalisation makes A asymmetric and gives the least similar
task of each row A = 0.
"""

from __future__ import annotations

import torch

from algorithms.dymu.anchor import AnchorNet


@torch.no_grad()
def stream_features(anchor: AnchorNet, images: torch.Tensor) -> list[list[torch.Tensor]]:
    """``feats[i][l]``: stream i's node-l output for ``images``, flattened to ``[K, D]``."""
    feats = []
    for j in range(anchor.n_tasks):
        h, per_layer = images, []
        for l in range(anchor.n_layers):
            h = anchor.node(l, j)(h)
            per_layer.append(h.flatten(1).float())
        feats.append(per_layer)
    return feats


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """K×K Pearson correlation between the rows of ``[K, D]``."""
    x = features - features.mean(dim=1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ x.T


def rsa_affinity(feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """A ``[N, N]`` from ``feats[i][l]`` (see the module docstring). A row whose tasks all share one
    representation (maximum distance 0) is all ones."""
    n, n_layers = len(feats), len(feats[0])
    per_layer = []
    for l in range(n_layers):
        sims = torch.stack([similarity_matrix(feats[i][l]) for i in range(n)])  # [N, K, K]
        dist = (sims[:, None] - sims[None, :]).flatten(2).norm(dim=-1)  # [N, N]
        top = dist.max(dim=1, keepdim=True).values
        per_layer.append(1 - torch.where(top > 0, dist / top.clamp_min(1e-12), torch.zeros_like(dist)))
    return torch.stack(per_layer).mean(0)
