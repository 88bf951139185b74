"""Backbones with named stages (``forward_features``) and per-task heads."""

from __future__ import annotations

from typing import Any

from framework.models.plain import PlainConvNet
from framework.models.resnet import MultiTaskNet, ResNet, make_head, norm_layer


def build_backbone(model_cfg: Any, in_channels: int) -> ResNet | PlainConvNet:
    if model_cfg.name == "plain":
        return PlainConvNet(in_channels, list(model_cfg.widths), model_cfg.norm)
    if model_cfg.name != "resnet":
        raise ValueError(f"model.name: unknown backbone '{model_cfg.name}' (available: resnet, plain)")
    return ResNet(in_channels, list(model_cfg.widths), model_cfg.blocks_per_stage, model_cfg.norm, model_cfg.stem_stride)


def build_multitask(model_cfg: Any, data_info: Any, tasks: dict[str, int] | None = None) -> MultiTaskNet:
    backbone = build_backbone(model_cfg, data_info.image_shape[0])
    return MultiTaskNet(backbone, tasks or data_info.tasks, model_cfg.head_hidden)


__all__ = ["PlainConvNet", "ResNet", "MultiTaskNet", "make_head", "norm_layer", "build_backbone", "build_multitask"]
