"""Structured config schema and its validation (torch-free, runs before any heavy import).

Fixed parts (trainer, optim, model, logger, paths) are typed dataclasses Hydra checks while
composing. The pluggable parts (algorithm, data, strategy) are typed by the dataclass each
plugin registered under its name; ``validate`` merges the composed node into that schema
and reports problems with their full key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.registry import ALGORITHMS, DATASETS, STRATEGIES, RegistryError


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the full key."""


# ---------------------------------------------------------------- plugin base configs
@dataclass
class AlgorithmConfig:
    name: str = "???"


@dataclass
class StrategyConfig:
    name: str = "single"


@dataclass
class DataConfig:
    name: str = "???"
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    shuffle_buffer: int = 1000
    limit: Optional[int] = None  # cap samples per split (tests)
    order: str = "local"  # local: shards dealt to ranks | global: batch k has the same ids at any world size
    on_error: str = "raise"  # raise | skip
    eval_splits: list = field(default_factory=lambda: ["val", "test"])


# ---------------------------------------------------------------- fixed configs
@dataclass
class TrainerConfig:
    max_steps: int = 1000
    eval_every: int = 0  # 0: evaluate only at the end
    ckpt_every: int = 0  # 0: checkpoint only at the end
    accumulate_grad_batches: int = 1
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 0
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    log_every: int = 50
    keep_last: int = 2
    monitor: Optional[str] = None  # e.g. val/left/acc: also keep checkpoints/best.pt
    monitor_mode: str = "max"
    max_bad_steps: int = 5  # consecutive non-finite losses before stopping
    eval_split: str = "val"  # split evaluated every eval_every steps; the end also runs "test"


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0


@dataclass
class ModelConfig:
    name: str = "resnet"  # resnet | plain (conv-norm-ReLU per stage, no residuals)
    widths: list = field(default_factory=lambda: [16, 32, 64])
    blocks_per_stage: int = 1
    norm: str = "batch"  # batch | group | none
    stem_stride: int = 2  # 2 halves the resolution first: 4x cheaper on 28x28 inputs
    head_hidden: int = 0  # 0: linear heads


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    progress: str = "auto"  # auto (bar on a terminal, log lines otherwise) | bar | lines | off


@dataclass
class PathsConfig:
    data_root: str = "${oc.env:MEDLEY_DATA,'~/.cache/medley/data'}"
    run_root: str = "${oc.env:MEDLEY_RUNS,'./runs'}"
    run_dir: Optional[str] = None  # explicit run directory; default run_root/name/timestamp


@dataclass
class TrainConfig:
    name: str = "default"
    algorithm: Any = field(default_factory=dict)
    data: Any = field(default_factory=dict)
    strategy: Any = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    resume: Optional[str] = None  # auto | PATH (run dir or checkpoint file)
    resume_weights_only: bool = False


_CHOICES = {
    "trainer.precision": ("fp32", "bf16"),
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.schedule": ("cosine", "constant"),
    "model.norm": ("batch", "group", "none"),
    "model.name": ("resnet", "plain"),
    "logger.progress": ("auto", "bar", "lines", "off"),
    "data.order": ("local", "global"),
    "data.on_error": ("raise", "skip"),
    "trainer.monitor_mode": ("max", "min"),
}

_PLUGGABLE = {"algorithm": ALGORITHMS, "data": DATASETS, "strategy": STRATEGIES}


CONFIG_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"


def register_schema() -> None:
    """Put every registered plugin's dataclass in Hydra's ConfigStore.

    ``schema/<group>/<name>`` is what YAML files extend (``defaults: [/schema/algorithm/x@_here_]``)
    so Hydra type-checks their keys; a plugin without a YAML file is also stored as
    ``<group>/<name>``, which makes ``algorithm=<name>`` work for third-party plugins.
    """
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="medley_schema", node=TrainConfig)
    for group, reg in _PLUGGABLE.items():
        for name in reg.names():
            node = reg.get(name).config(name=name)
            cs.store(group=f"schema/{group}", name=name, node=node, provider="medley")
            if not (CONFIG_DIR / group / f"{name}.yaml").exists():
                cs.store(group=group, name=name, node=node, provider="medley")


def _typed(group: str, node: Any, reg) -> DictConfig:
    if not isinstance(node, DictConfig) or "name" not in node:
        raise ConfigError(f"{group}: missing; choose one of {reg.names()} (e.g. {group}={reg.names()[0]})")
    name = node.name
    try:
        entry = reg.get(name)
    except RegistryError as exc:
        raise ConfigError(f"{group}.name: {exc}") from None
    schema = OmegaConf.structured(entry.config)
    allowed = [f.name for f in dataclasses.fields(entry.config)]
    for key in node.keys():
        if key not in allowed:
            raise ConfigError(
                f"{group}.{key}: unknown key for {reg.kind} '{name}'; allowed keys: {', '.join(allowed)}"
            )
    try:
        return OmegaConf.merge(schema, node)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{group}.{key}: {str(exc).splitlines()[0]} ({reg.kind} '{name}')") from None


def validate(cfg: DictConfig) -> DictConfig:
    """Type the pluggable groups, check choices and missing values; raise ConfigError naming the key."""
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    for group, reg in _PLUGGABLE.items():
        out[group] = _typed(group, cfg.get(group), reg)
    missing = sorted(OmegaConf.missing_keys(out))
    if missing:
        raise ConfigError(f"{missing[0]}: missing value (set it on the command line, e.g. {missing[0]}=...)")
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(out, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")
    for key in ("trainer.max_steps", "trainer.accumulate_grad_batches", "data.batch_size"):
        if OmegaConf.select(out, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {OmegaConf.select(out, key)}")
    for key in ("trainer.eval_every", "trainer.ckpt_every", "trainer.log_every", "data.num_workers"):
        if OmegaConf.select(out, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {OmegaConf.select(out, key)}")
    try:
        OmegaConf.resolve(out)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{getattr(exc, 'full_key', '?')}: {str(exc).splitlines()[0]}") from None
    OmegaConf.set_struct(out, True)
    return out


def plugin_config(node: DictConfig, reg) -> Any:
    """The plugin's config dataclass instance (``cfg.algorithm`` → ``EqualWeightConfig``)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(reg.get(node.name).config), node))
