"""A small ResNet-style backbone with named stages, and per-task heads (no torchvision)."""

from __future__ import annotations

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm: unknown norm '{kind}' (batch | group | none)")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class StagedBackbone(nn.Module):
    """Runs ``self.stage_names`` in order; every stage's output is tappable by name, plus ``pool``."""

    stage_names: list[str]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            feats[name] = x
        feats["pool"] = x.mean(dim=(2, 3))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["pool"]


class ResNet(StagedBackbone):
    """Stages ``stem, stage1..stageN`` (stride 2 from stage2 on), then global pooling ``pool``."""

    def __init__(self, in_channels: int, widths: list[int], blocks_per_stage: int = 1, norm: str = "batch",
                 stem_stride: int = 1):
        super().__init__()
        self.stage_names = ["stem"] + [f"stage{i + 1}" for i in range(len(widths))]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False), norm_layer(norm, widths[0]), nn.ReLU()
        )
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(cin if b == 0 else w, w, 2 if (i > 0 and b == 0) else 1, norm)
                      for b in range(blocks_per_stage)]
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.out_dim = widths[-1]



def make_head(in_dim: int, num_classes: int, hidden: int = 0) -> nn.Module:
    if hidden:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    return nn.Linear(in_dim, num_classes)


class MultiTaskNet(nn.Module):
    """Hard-shared backbone + one head per task; ``forward`` returns ``{task: logits}``."""

    def __init__(self, backbone: ResNet, tasks: dict[str, int], head_hidden: int = 0):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({t: make_head(backbone.out_dim, n, head_hidden) for t, n in tasks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.backbone(x)
        return {t: head(z) for t, head in self.heads.items()}
