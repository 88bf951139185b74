"""A plain conv stack (conv → norm → ReLU per stage, stride 2 from stage2 on) with named stages.

Small, residual-free backbones are what method miniatures are specified on (e.g. the CDT
miniature's conv16 → conv32/2 → conv32/2); same ``forward_features`` contract as ``ResNet``.
"""

from __future__ import annotations

from torch import nn

from framework.models.resnet import StagedBackbone, norm_layer


class PlainConvNet(StagedBackbone):
    def __init__(self, in_channels: int, widths: list[int], norm: str = "none"):
        super().__init__()
        self.stage_names = [f"stage{i + 1}" for i in range(len(widths))]
        cin = in_channels
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            self.add_module(self.stage_names[i], nn.Sequential(
                nn.Conv2d(cin, w, 3, stride, 1, bias=norm == "none"), norm_layer(norm, w), nn.ReLU()))
            cin = w
        self.out_dim = widths[-1]
