"""Structured config schema and its validation (torch-free, runs before any heavy import).

Fixed parts (trainer, optim, model, logger, paths) are typed dataclasses Hydra checks while
composing. The pluggable parts (algorithm, data, strategy) are typed by the dataclass each
plugin registered under its name; ``validate`` merges the composed node into that schema
and reports problems with their full key.

Numeric keys declare their valid range where they are defined (``ranged(50, ge=1)``, or
``metadata={"range": (1, None)}``), third-party plugins included, so that a value the run
would divide by or index with fails here, before torch is imported. A key that is not in the
schema is answered with the valid keys closest to it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from framework.registry import ALGORITHMS, DATASETS, STRATEGIES, RegistryError


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the full key."""


# ---------------------------------------------------------------- valid ranges
# Dataclass field metadata key: a Range, or a closed (low, high) tuple with None for an open end.
RANGE = "range"


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key (of every entry, for a list key).

    Declared where the key is, so that ``validate`` rejects ``trainer.log_every=0`` at start-up
    instead of the step that divides by it; ``None`` bounds are open ends.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded (``lr > 0``)
    high_open: bool = False
    choices: tuple = ()  # a discrete set instead of an interval (``channels`` 1 or 3)

    def __contains__(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.choices:
            return f"one of {', '.join(_num(c) for c in self.choices)}"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"


def _num(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def ranged(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, choices: Sequence = (),
           default_factory: Any = MISSING) -> Any:
    """A dataclass field with its valid range, checked by ``validate`` before anything runs.

    ``log_every: int = ranged(50, ge=1)``, ``lr: float = ranged(0.05, gt=0)``,
    ``widths: list = ranged(default_factory=lambda: [16, 32], ge=1)`` (every entry).
    """
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("ranged: give at most one lower (ge | gt) and one upper (le | lt) bound")
    if not choices and ge is None and gt is None and le is None and lt is None:
        raise TypeError("ranged: give a bound (ge, gt, le, lt) or choices")
    valid = Range(ge if gt is None else gt, le if lt is None else lt, gt is not None, lt is not None,
                  tuple(choices))
    return field(default=default, default_factory=default_factory, metadata={RANGE: valid})


def field_range(f: dataclasses.Field) -> Range | None:
    """The declared range of a dataclass field, from ``ranged`` or ``metadata={"range": (low, high)}``."""
    declared = f.metadata.get(RANGE)
    if declared is None or isinstance(declared, Range):
        return declared
    low, high = declared
    return Range(low, high)


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
    batch_size: int = ranged(128, ge=1)
    eval_batch_size: int = ranged(512, ge=1)
    num_workers: int = ranged(0, ge=0)
    shuffle_buffer: int = ranged(1000, ge=1)  # samples held for shuffling; 1 keeps the shard order
    limit: Optional[int] = ranged(None, ge=1)  # cap samples per split (tests); None: all
    order: str = "local"  # local: shards dealt to ranks | global: batch k has the same ids at any world size
    # raise: a bad shard stops the run, named (missing/resized/changed ones at start-up) | skip: bad shards,
    # also ones changed since prepare, are left out, counted in skipped_data, equal steps per rank kept
    on_error: str = "raise"
    allow_pipe_shards: bool = False  # run the shell commands of a manifest's `pipe:` shard entries
    eval_splits: list = field(default_factory=lambda: ["val", "test"])


# ---------------------------------------------------------------- fixed configs
@dataclass
class TrainerConfig:
    max_steps: int = ranged(1000, ge=1)
    eval_every: int = ranged(0, ge=0)  # 0: evaluate only at the end
    ckpt_every: int = ranged(0, ge=0)  # 0: checkpoint only at the end
    accumulate_grad_batches: int = ranged(1, ge=1)
    precision: str = "fp32"  # fp32 | bf16
    seed: int = ranged(0, ge=0, le=2**32 - 1)  # numpy's seed range; rank r uses seed·1000 + r
    grad_clip: float = ranged(0.0, ge=0)  # max global grad norm; 0 disables
    log_every: int = ranged(50, ge=1)
    keep_last: int = ranged(2, ge=0)  # 0: keep every checkpoint
    monitor: Optional[str] = None  # e.g. val/left/acc: also keep checkpoints/best.pt
    monitor_mode: str = "max"
    max_bad_steps: int = ranged(5, ge=1)  # stop when this many consecutive losses are non-finite
    # SIGTERM: ranks agree to stop every this many steps (one all-reduce), then checkpoint and exit 75
    preempt_check_every: int = ranged(10, ge=1)
    eval_split: str = "val"  # split evaluated every eval_every steps; the end also runs "test"
    # hooks loaded by name: ["pkg.mod:Class", {class: "pkg.mod:Class", kwarg: value}] (docs/phases.md)
    callbacks: list = field(default_factory=list)
    # named evaluation sets: {name: {split: test, select: {task_or_attribute: [values]}}} (docs/phases.md)
    eval_sets: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = ranged(0.05, gt=0)
    momentum: float = ranged(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = ranged(0.0, ge=0)
    warmup_steps: int = ranged(0, ge=0)
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = ranged(0.0, ge=0, le=1)  # cosine ends at lr · min_lr_ratio


@dataclass
class ModelConfig:
    name: str = "resnet"  # resnet | plain (conv-norm-ReLU per stage, no residuals)
    widths: list = ranged(default_factory=lambda: [16, 32, 64], ge=1)  # channels per stage
    blocks_per_stage: int = ranged(1, ge=1)
    norm: str = "batch"  # batch | group | none
    stem_stride: int = ranged(2, ge=1)  # 2 halves the resolution first: 4x cheaper on 28x28 inputs
    head_hidden: int = ranged(0, ge=0)  # 0: linear heads


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


# ---------------------------------------------------------------- schema walk
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``name -> (field, resolved type)`` of a config dataclass."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: keep it as written
        hints = {}
    return {f.name: (f, hints.get(f.name, f.type)) for f in dataclasses.fields(cls)}


def _is_schema(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def schema_leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(full key, field, type)`` of every leaf of a config dataclass; nested dataclasses are walked."""
    for name, (f, hint) in _fields(cls).items():
        key = f"{prefix}.{name}" if prefix else name
        if _is_schema(hint):
            yield from schema_leaves(hint, key)
        else:
            yield key, f, hint


def _schemas(cfg: DictConfig) -> list[tuple[str, type, str]]:
    """``(prefix, dataclass, owner)``: the fixed schema, then the dataclass of each chosen plugin."""
    out = [("", TrainConfig, "")]
    for group, reg in _PLUGGABLE.items():
        name = OmegaConf.select(cfg, f"{group}.name", default=None, throw_on_missing=False)
        if isinstance(name, str) and name in reg:
            out.append((group, reg.get(name).config, f"{reg.kind} '{name}'"))
    return out


def schema_keys(cfg: DictConfig | None = None) -> list[str]:
    """Every valid full key of ``cfg``'s schema with its chosen plugins; without ``cfg``, of
    every registered plugin (group names included, so a typo in a group is matched too)."""
    if cfg is not None:
        schemas = _schemas(cfg)
    else:
        plugins = [(group, reg.get(name).config, "")
                   for group, reg in _PLUGGABLE.items() for name in reg.names()]
        schemas = [("", TrainConfig, ""), *plugins]
    groups = [key for key, (_, hint) in _fields(TrainConfig).items() if _is_schema(hint)]
    keys = list(groups) + [key for prefix, cls, _ in schemas for key, _, _ in schema_leaves(cls, prefix)]
    return list(dict.fromkeys(keys))


# ---------------------------------------------------------------- unknown keys
def _nearest(word: str, options: Sequence[str], cutoff: float, n: int = 3) -> list[str]:
    """The options most similar to ``word`` (difflib ratio ≥ cutoff), only those close to the best."""
    scored = sorted(((difflib.SequenceMatcher(None, word, o).ratio(), o) for o in options), reverse=True)
    best = scored[0][0] if scored else 0.0
    return [o for score, o in scored[:n] if score >= cutoff and score >= best - 0.1]


def close_keys(key: str, keys: Sequence[str]) -> list[str]:
    """The valid keys ``key`` most likely meant: a near name under the same parent
    (``trainer.log_evry``), else a near full key (``trainr.log_every``), else the same name
    under another parent (``lr`` → ``optim.lr``)."""
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    found = [siblings[m] for m in _nearest(leaf, list(siblings), 0.7)]
    found = found or _nearest(key, keys, 0.8)
    return found or [k for k in keys if k.rpartition(".")[2] == leaf][:3]


def unknown_key(key: str, keys: Sequence[str], owner: str = "") -> str:
    """"Key 'x' is not in the config; did you mean y?" (or the valid keys beside it)."""
    where = f"the config of {owner}" if owner else "the config"
    near = close_keys(key, keys)
    if near:
        return f"Key '{key}' is not in {where}; did you mean {' or '.join(near)}?"
    parent = key.rpartition(".")[0]
    beside = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent] if parent in keys else []
    if not beside:
        parent, beside = "", [k for k in keys if "." not in k]
    under = f" under {parent}" if parent else ""
    return f"Key '{key}' is not in {where}; valid keys{under}: {', '.join(beside)}"


def _owner(cfg: DictConfig | None, key: str) -> str:
    """``algorithm 'cdt'`` for a key of the chosen algorithm; "" for a fixed key."""
    if cfg is None:
        return ""
    group = key.partition(".")[0]
    return next((owner for prefix, _, owner in _schemas(cfg) if prefix == group), "")


def _extra_keys(node: Any, cls: type, prefix: str, owner: str, keys: list[str]) -> list[str]:
    """Keys of ``node`` its dataclass does not have (``+trainer.log_evry=1`` gets past Hydra)."""
    if not isinstance(node, DictConfig):
        return []
    known, out = _fields(cls), []
    for name in node.keys():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in known:
            out.append(unknown_key(key, keys, owner))
        elif _is_schema(known[name][1]):
            out += _extra_keys(node[name], known[name][1], key, owner, keys)
    return out


def compose_overrides(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Hydra's composition of ``configs/<config_name>.yaml`` with ``overrides`` (not validated;
    plugins must be registered, see ``register_schema``).

    For a mistyped key Hydra advises "To append to your config use +key=value", which the schema
    then refuses. Here every unknown key is reported at once, each with the valid keys closest to
    it, as a ``ConfigError``; other composition errors are Hydra's own.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    unknown: list[str] = []
    wrong: list[tuple[str, str, str]] = []  # (key, value as given, Hydra's reason) of values of the wrong type
    rest, cfg = list(overrides), None
    while True:
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name, overrides=rest)
            break
        except ConfigCompositionException as exc:
            culprit = _unknown_override(exc, rest)
            bad = None if culprit else _wrong_type_override(exc, rest)
            if culprit is None and bad is None and not (unknown or wrong):
                raise
            if culprit is None and bad is None:  # another problem besides these: report those first
                cfg = None
                break
            if culprit:
                rest.remove(culprit[0])
                unknown.append(culprit[1])
            else:
                rest.remove(bad[0])
                wrong.append(bad[1:])
    if unknown:
        keys = schema_keys(cfg)
        raise ConfigError("\n".join(unknown_key(key, keys, _owner(cfg, key)) for key in unknown))
    if wrong:
        raise ConfigError("\n".join(_wrong_type(cfg, *w) for w in wrong))
    return cfg


def _wrong_type_override(exc: Exception, overrides: list[str]) -> tuple[str, str, str, str] | None:
    """``(override, key, value, reason)`` when Hydra could not convert an override's value to its key's type."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.errors import ValidationError

    cause = exc.__cause__
    key = getattr(cause, "full_key", None)
    if not isinstance(cause, ValidationError) or not key:
        return None
    for line, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if parsed.key_or_group == key:
            return line, key, line.partition("=")[2], str(cause).splitlines()[0]
    return None


def _wrong_type(cfg: DictConfig | None, key: str, value: str, reason: str) -> str:
    """``key='value': must be <type> <range or choices> (Hydra's reason)``."""
    leaf = next(((f, hint) for prefix, cls, _ in (_schemas(cfg) if cfg is not None else [("", TrainConfig, "")])
                 for k, f, hint in schema_leaves(cls, prefix) if k == key), None)
    expected = ""
    if leaf is not None:
        f, hint = leaf
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args else hint
        expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                    list: "a list", dict: "a mapping"}.get(typing.get_origin(base) or base, str(base))
        valid = field_range(f)
        if valid is not None:
            expected += f" {valid}"
        if key in _CHOICES:
            expected += f" (one of {', '.join(_CHOICES[key])})"
        if args and len(typing.get_args(hint)) > len(args):
            expected += " or null"
    must = f"must be {expected} " if expected else ""
    return f"{key}={value!r}: {must}({reason})"


def _unknown_override(exc: Exception, overrides: list[str]) -> tuple[str, str] | None:
    """``(override, key)`` that made Hydra fail on a key missing from the schema, if that is the cause."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cause = exc.__cause__
    missing = getattr(cause, "full_key", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not missing:
        return None
    for line, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        key = parsed.key_or_group
        if key == missing or key.startswith(f"{missing}."):
            return line, key
    return None


# ---------------------------------------------------------------- validation
def _plugin(group: str, node: Any, reg) -> Any:
    """The registry entry ``cfg.<group>.name`` selects."""
    if not isinstance(node, DictConfig) or "name" not in node:
        raise ConfigError(f"{group}: missing; choose one of {reg.names()} (e.g. {group}={reg.names()[0]})")
    try:
        return reg.get(node.name)
    except RegistryError as exc:
        raise ConfigError(f"{group}.name: {exc}") from None


def _typed(group: str, node: DictConfig, reg) -> DictConfig:
    entry = _plugin(group, node, reg)
    try:
        return OmegaConf.merge(OmegaConf.structured(entry.config), node)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{group}.{key}: {str(exc).splitlines()[0]} ({reg.kind} '{node.name}')") from None


def _out_of_range(cfg: DictConfig) -> list[str]:
    """``key=value: must be ...`` for every value outside its declared range (list keys: per entry)."""
    errors = []
    for prefix, cls, _ in _schemas(cfg):
        for key, f, _ in schema_leaves(cls, prefix):
            valid = field_range(f)
            if valid is None:
                continue
            value = OmegaConf.select(cfg, key)
            if isinstance(value, ListConfig):
                entries = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
            else:
                entries = [(key, value)]
            for name, v in entries:
                if v is None:  # Optional keys
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    errors.append(f"{name}={v!r}: must be a number {valid}")
                elif v not in valid:
                    finite = "" if valid.choices or math.isfinite(v) else "a finite number "
                    errors.append(f"{name}={v}: must be {finite}{valid}")
    return errors


def validate(cfg: DictConfig) -> DictConfig:
    """Type the pluggable groups, check keys, choices, missing values and ranges; raise
    ConfigError naming the key (every unknown key, or every out-of-range value, at once)."""
    for group, reg in _PLUGGABLE.items():
        _plugin(group, cfg.get(group), reg)
    keys = schema_keys(cfg)
    unknown = [err for prefix, cls, owner in _schemas(cfg)
               for err in _extra_keys(cfg.get(prefix) if prefix else cfg, cls, prefix, owner, keys)]
    if unknown:
        raise ConfigError("\n".join(unknown))
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
    try:
        OmegaConf.resolve(out)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{getattr(exc, 'full_key', '?')}: {str(exc).splitlines()[0]}") from None
    bad = _out_of_range(out)
    if bad:
        raise ConfigError("\n".join(bad))
    OmegaConf.set_struct(out, True)
    return out


def plugin_config(node: DictConfig, reg) -> Any:
    """The plugin's config dataclass instance (``cfg.algorithm`` → ``EqualWeightConfig``)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(reg.get(node.name).config), node))
