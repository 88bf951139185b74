"""Optimizers and the LR schedule (linear warm-up, then cosine or constant) from ``cfg.optim``."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn


def lr_lambda(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(params: list, ocfg: Any) -> torch.optim.Optimizer:
    if ocfg.name == "sgd":
        return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay)
    if ocfg.name == "adam":
        return torch.optim.Adam(params, lr=ocfg.lr, weight_decay=ocfg.weight_decay)
    if ocfg.name == "adamw":
        return torch.optim.AdamW(params, lr=ocfg.lr, weight_decay=ocfg.weight_decay)
    raise ValueError(f"optim.name: unknown optimizer '{ocfg.name}' (sgd | adam | adamw)")


def build_scheduler(optimizer: torch.optim.Optimizer, ocfg: Any, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(s, ocfg.warmup_steps, total_steps, ocfg.schedule, ocfg.min_lr_ratio),
    )


def default_optimizer(model: nn.Module, owned: nn.Module | None, cfg: Any, total_steps: int | None = None,
                      overrides: dict | None = None) -> tuple[Any, Any]:
    """One optimizer over the trainable parameters; its schedule spans ``total_steps`` (a phase;
    default ``trainer.max_steps``). ``overrides`` replace ``optim.*`` keys (a phase's ``optim``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if owned is not None:
        params += [p for p in owned.parameters() if p.requires_grad]
    ocfg = cfg.optim
    if overrides:
        unknown = sorted(set(overrides) - set(ocfg.keys()))
        if unknown:
            raise ValueError(f"phase optim overrides {unknown}: not optim.* keys (have {sorted(ocfg.keys())})")
        ocfg = SimpleNamespace(**{**{k: ocfg[k] for k in ocfg.keys()}, **overrides})
    if not params:
        raise ValueError("no trainable parameters in this phase (check the phase's `trainable` prefixes)")
    opt = build_optimizer(params, ocfg)
    return opt, build_scheduler(opt, ocfg, cfg.trainer.max_steps if total_steps is None else total_steps)
