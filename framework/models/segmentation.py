"""A small encoder-decoder for semantic segmentation: the zoo's staged backbone, a DeepLab-style
atrous pyramid on its last stage, one skip from its first stage, and a per-pixel classifier.

The classifier is a 1×1 convolution or a cosine classifier (``z_k = s · cos(f, w_k)``, features
and weights L2-normalised over channels, no bias): methods that read class relations from the
logits (UniSeg's statistics pass) want scores on one bounded scale for every class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from framework.models.resnet import StagedBackbone, norm_layer

HEADS = ("linear", "cosine")


def conv_norm_relu(cin: int, cout: int, kernel: int, norm: str, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, pad, dilation=dilation, bias=norm == "none"),
                         norm_layer(norm, cout), nn.ReLU())


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch, 3×3 branches at ``rates``, image pooling, fused by 1×1."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...], norm: str):
        super().__init__()
        self.branches = nn.ModuleList([conv_norm_relu(cin, cout, 1, norm)]
                                      + [conv_norm_relu(cin, cout, 3, norm, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=True), nn.ReLU())
        self.project = conv_norm_relu(cout * (len(rates) + 2), cout, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [b(x) for b in self.branches]
        parts.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(parts, dim=1))


class CosineClassifier(nn.Module):
    """``scale · cos(feature, w_k)`` per pixel; no bias, so every class score lies in [-scale, scale]."""

    def __init__(self, cin: int, num_classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, cin, 1, 1) * cin ** -0.5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.conv2d(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class SegmentationNet(nn.Module):
    """``forward(x) -> logits [B, K, H, W]`` at the input resolution (DeepLabV3+-style decoder)."""

    def __init__(self, backbone: StagedBackbone, low_channels: int, num_classes: int, width: int = 32,
                 rates: tuple[int, ...] = (2, 4), norm: str = "batch", head: str = "linear", scale: float = 20.0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"segmentation head '{head}' is not one of {', '.join(HEADS)}")
        self.backbone = backbone
        self.low_name = backbone.stage_names[1] if backbone.stage_names[0] == "stem" else backbone.stage_names[0]
        self.aspp = ASPP(backbone.out_dim, width, rates, norm)
        self.low = conv_norm_relu(low_channels, width // 2, 1, norm)
        self.fuse = conv_norm_relu(width + width // 2, width, 3, norm)
        self.classifier = CosineClassifier(width, num_classes, scale) if head == "cosine" else nn.Conv2d(
            width, num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel decoder features at the resolution of the skip stage."""
        feats = self.backbone.forward_features(x)
        low = self.low(feats[self.low_name])
        high = F.interpolate(self.aspp(feats[self.backbone.stage_names[-1]]), size=low.shape[2:],
                             mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, low], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def build_segmentation(model_cfg: Any, in_channels: int, num_classes: int, head: str = "linear",
                       scale: float = 20.0, width: int | None = None, rates: tuple[int, ...] = (2, 4)
                       ) -> SegmentationNet:
    """The zoo's backbone from ``model.*`` (``name``, ``widths``, ``norm``, ...) under a segmentation decoder.
    ``width``: decoder channels (default: the last stage's width)."""
    from framework.models import build_backbone

    backbone = build_backbone(model_cfg, in_channels)
    widths = list(model_cfg.widths)
    low_channels = widths[0]
    return SegmentationNet(backbone, low_channels, num_classes, width or widths[-1], tuple(rates),
                           model_cfg.norm, head, scale)
