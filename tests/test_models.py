"""Backbones expose named stages so that methods can tap them."""

import torch
from omegaconf import OmegaConf

from framework.config import ModelConfig
from framework.models import PlainConvNet, ResNet, build_backbone


def test_plain_backbone_matches_the_spec_shape_and_has_no_residuals():
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": "plain", "widths": [16, 32, 32], "norm": "none"})
    net = build_backbone(cfg, in_channels=1)
    assert isinstance(net, PlainConvNet)
    feats = net.forward_features(torch.zeros(2, 1, 16, 16))
    assert [tuple(feats[n].shape) for n in net.stage_names] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4)]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 3


def test_resnet_stages_are_named_and_pooled():
    net = ResNet(1, [8, 16], norm="group", stem_stride=2)
    feats = net.forward_features(torch.zeros(2, 1, 28, 28))
    assert net.stage_names == ["stem", "stage1", "stage2"]
    assert tuple(feats["stage2"].shape) == (2, 16, 7, 7) and tuple(feats["pool"].shape) == (2, 16)
