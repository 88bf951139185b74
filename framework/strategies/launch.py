"""Start-up checks between the launcher's environment and the Hydra config (torch-free).

They run before any process group starts, so a wrong launch fails in a second with a message
naming both sides instead of hanging in a collective or silently training each rank alone.
The Hydra config is the only source of precision, accumulation, clipping and the ZeRO stage;
a launcher flag that disagrees (``accelerate launch --mixed_precision bf16`` with
``trainer.precision=fp32``) is an error, never silently preferred.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from framework.config import ConfigError

#: strategies that run one process per rank and join a process group
DISTRIBUTED = ("ddp", "deepspeed")
ZERO_STAGES = (0, 1, 2, 3)


def launched_world_size(env: Mapping[str, str] = os.environ) -> int:
    """Processes the launcher started (torchrun, accelerate, deepspeed and Ray all set WORLD_SIZE)."""
    return int(env.get("WORLD_SIZE", "1"))


def check_launch(cfg: Any, env: Mapping[str, str] = os.environ) -> None:
    """Fail naming the config key and the launcher setting when they disagree."""
    strategy = cfg.strategy.name
    world = launched_world_size(env)
    if world > 1 and strategy not in DISTRIBUTED:
        raise ConfigError(
            f"strategy.name: the launcher started {world} processes (WORLD_SIZE={world}) but "
            f"strategy={strategy} trains each one alone; use strategy=ddp or strategy=deepspeed"
        )
    if strategy == "deepspeed" and cfg.strategy.zero_stage not in ZERO_STAGES:
        raise ConfigError(f"strategy.zero_stage: {cfg.strategy.zero_stage} is not one of 0, 1, 2, 3")
    if strategy == "deepspeed":
        check_deepspeed_extra(cfg.strategy.get("extra") or {})
    _check_accelerate_env(cfg, env)


def _check_accelerate_env(cfg: Any, env: Mapping[str, str]) -> None:
    t, strategy = cfg.trainer, cfg.strategy.name
    launcher_precision = env.get("ACCELERATE_MIXED_PRECISION")
    wanted = {"fp32": "no", "bf16": "bf16"}[t.precision]
    if launcher_precision is not None and launcher_precision.lower() != wanted:
        raise ConfigError(
            f"trainer.precision: the config says {t.precision}, the launcher says mixed_precision="
            f"{launcher_precision} (ACCELERATE_MIXED_PRECISION); precision comes from the config: "
            f"drop the launcher setting or set trainer.precision"
        )
    _same(env, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "trainer.accumulate_grad_batches",
          t.accumulate_grad_batches, int)
    _same(env, "ACCELERATE_GRADIENT_CLIPPING", "trainer.grad_clip", t.grad_clip, float)
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ConfigError(f"strategy.name: the launcher asks for FSDP; Medley has no FSDP strategy (got {strategy})")
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and strategy != "deepspeed":
        raise ConfigError(f"strategy.name: the launcher asks for DeepSpeed (--use_deepspeed) but strategy={strategy}")
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise ConfigError(
            "strategy: a DeepSpeed config file was given to the launcher "
            f"({env['ACCELERATE_DEEPSPEED_CONFIG_FILE']}); the DeepSpeed config is built from strategy.* "
            "and trainer.* only (put extra keys under strategy.extra)"
        )
    if "ACCELERATE_DEEPSPEED_ZERO_STAGE" in env:
        stage = int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
        if strategy != "deepspeed" or cfg.strategy.zero_stage != stage:
            have = f"strategy={strategy}"
            if strategy == "deepspeed":
                have = f"strategy.zero_stage={cfg.strategy.zero_stage}"
            raise ConfigError(f"strategy.zero_stage: the launcher says --zero_stage {stage}, the config says {have}")


def _same(env: Mapping[str, str], var: str, key: str, value: Any, kind: type) -> None:
    if var in env and kind(env[var]) != kind(value):
        raise ConfigError(f"{key}: the config says {value}, the launcher says {env[var]} ({var}); "
                          f"this setting comes from the config only")


#: DeepSpeed keys Medley derives from the config; ``strategy.extra`` may not set them
OWNED_KEYS = {
    "train_batch_size": "data.batch_size",
    "train_micro_batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "trainer.accumulate_grad_batches",
    "gradient_clipping": "trainer.grad_clip",
    "bf16": "trainer.precision",
    "fp16": "trainer.precision",
    "torch_autocast": "trainer.precision",
    "optimizer": "optim.*",
    "scheduler": "optim.*",
    "managed_gradient_accumulation": "trainer.accumulate_grad_batches",
}


def check_deepspeed_extra(extra: Mapping[str, Any]) -> None:
    for key in extra:
        if key in OWNED_KEYS:
            raise ConfigError(f"strategy.extra.{key}: set by Medley from {OWNED_KEYS[key]}; change that key instead")
    stage = (extra.get("zero_optimization") or {}).get("stage")
    if stage is not None:
        raise ConfigError("strategy.extra.zero_optimization.stage: use strategy.zero_stage")


def deepspeed_config(cfg: Any, world_size: int) -> dict:
    """The DeepSpeed config, derived from the Hydra config alone.

    Accumulation is driven by the trainer (``managed_gradient_accumulation: false``: backward
    only accumulates, ``engine.step()`` is the boundary); clipping is DeepSpeed's own, set to
    ``trainer.grad_clip`` because DeepSpeed's default is 1.0, not off.
    """
    t, s = cfg.trainer, cfg.strategy
    accum = t.accumulate_grad_batches
    out: dict = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": cfg.data.batch_size * accum * world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": float(t.grad_clip),
        # bf16 = torch autocast inside the engine, fp32 weights and optimizer state, as under the
        # other strategies. DeepSpeed's own "bf16" weight mode is not used: its engine switches
        # the trainer's autocast off and then needs bf16 inputs.
        "torch_autocast": {"enabled": t.precision == "bf16", "dtype": "bfloat16"},
        "zero_optimization": {"stage": int(s.zero_stage)},
        "zero_allow_untested_optimizer": True,  # the optimizer is the algorithm's torch optimizer
        "steps_per_print": 2**31 - 1,  # Medley logs; DeepSpeed's progress lines would duplicate
        "wall_clock_breakdown": False,
    }
    extra = s.extra if "extra" in s else {}
    return _merge(out, OmegaConf.to_container(extra) if OmegaConf.is_config(extra) else dict(extra))


def _merge(base: dict, extra: Mapping[str, Any]) -> dict:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = value
    return base
