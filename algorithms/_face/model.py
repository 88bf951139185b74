"""A face network with the three taps the face methods need, from one forward pass.

``f_r`` (the backbone's last feature map, un-normalised) → flatten → FC ("neck") → the test
embedding ``emb`` → (a) the margin classifier over all training identities and (b) an extra
FC ``f_e`` used only by the triplet loss. Everything, the classifier included, is called from
``forward`` so that ``torch.func.functional_call`` with fast weights reaches every parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from algorithms._face.heads import MarginHead


class FaceNet(nn.Module):
    def __init__(self, backbone: nn.Module, fmap_shape: tuple[int, int, int], num_classes: int,
                 embedding_dim: int = 256, triplet_dim: int = 128, scale: float = 64.0,
                 margin: float = 0.35, kind: str = "cosface"):
        super().__init__()
        self.backbone = backbone
        d, h, w = fmap_shape
        self.neck = nn.Linear(d * h * w, embedding_dim)
        self.head = MarginHead(embedding_dim, num_classes, scale, margin, kind)
        self.triplet = nn.Linear(embedding_dim, triplet_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                margin: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns ``fmap`` [B,D,H,W], ``emb`` [B,E], ``trip`` [B,T] and fp32 ``logits`` [B,C]
        (margin-penalised when ``labels`` is given)."""
        fmap = self.backbone.forward_features(x)[self.backbone.stage_names[-1]]
        emb = self.neck(fmap.flatten(1))
        return {"fmap": fmap, "emb": emb, "trip": self.triplet(emb), "logits": self.head(emb, labels, margin)}


def build_face_net(model_cfg: Any, image_shape: tuple[int, int, int], num_classes: int,
                   embedding_dim: int, triplet_dim: int, scale: float, margin: float,
                   kind: str = "cosface") -> FaceNet:
    """A ``FaceNet`` on the configured Medley backbone; the feature-map shape is probed once."""
    from framework.models import build_backbone

    backbone = build_backbone(model_cfg, image_shape[0])
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        probe = backbone.forward_features(torch.zeros(1, *image_shape))[backbone.stage_names[-1]]
        backbone.train(was)
    return FaceNet(backbone, tuple(probe.shape[1:]), num_classes, embedding_dim, triplet_dim, scale, margin, kind)
