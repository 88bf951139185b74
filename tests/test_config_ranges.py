"""Every numeric key declares its valid range, and ``validate`` refuses a value outside it,
naming the key, the value and the range, before anything runs."""

import copy
import math
import typing
from dataclasses import dataclass, field

import pytest
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import ValidationError

from framework.config import (
    AlgorithmConfig,
    ConfigError,
    Range,
    TrainConfig,
    compose_overrides,
    field_range,
    ranged,
    register_schema,
    schema_leaves,
    validate,
)
from framework.registry import ALGORITHMS, DATASETS, STRATEGIES, load_plugins

REGISTRIES = {"algorithm": ALGORITHMS, "data": DATASETS, "strategy": STRATEGIES}
OWN_MODULES = ("algorithms.", "framework.")  # the schemas this repository ships

load_plugins()


def _schemas():
    """``(group, plugin name, dataclass, module)``: the fixed schema, then every registered plugin."""
    yield "", "", TrainConfig, "framework.config"
    for group, reg in REGISTRIES.items():
        for name in reg.names():
            entry = reg.get(name)
            yield group, name, entry.config, entry.source


def _leaves():
    for group, name, cls, source in _schemas():
        for key, f, hint in schema_leaves(cls, group):
            if not group and key in REGISTRIES:  # typed by the chosen plugin's dataclass
                continue
            yield group, name, key, f, hint, source


def _numeric(f, hint) -> bool:
    """int / float keys (``Optional`` too), and list keys whose default holds numbers."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if len(kinds) == 1 and kinds[0] in (int, float):
        return True
    if hint is list and f.default_factory is not None and callable(f.default_factory):
        default = f.default_factory()
        return bool(default) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default)
    return False


def _outside(valid: Range) -> list:
    """Values just outside ``valid``: below its low end and above its high end."""
    if valid.choices:
        return [max(valid.choices) + 1]
    out = []
    if valid.low is not None:
        out.append(valid.low if valid.low_open else valid.low - 1)
    if valid.high is not None:
        out.append(valid.high if valid.high_open else valid.high + 1)
    return out


_COMPOSED: dict[str, object] = {}


def _composed(group: str, name: str):
    """The composed, not yet validated config that selects this plugin (cached per plugin)."""
    override = f"{group}={name}" if group else ""
    if override not in _COMPOSED:
        register_schema()
        _COMPOSED[override] = compose_overrides([override] if override else [])
    return copy.deepcopy(_COMPOSED[override])


def _ranged_leaves():
    """Each declared range once: a key inherited unchanged (``data.seed`` of every dataset) is
    the same field object in every subclass and is tested with the first plugin that has it."""
    seen = set()
    for group, name, key, f, _, _ in _leaves():
        if field_range(f) is not None and (key, id(f)) not in seen:
            seen.add((key, id(f)))
            yield group, name, key, field_range(f)


RANGED = list(_ranged_leaves())


def test_every_numeric_key_of_the_shipped_schemas_declares_a_range():
    undeclared = [f"{key} ({name or 'fixed schema'})" for _, name, key, f, hint, source in _leaves()
                  if source.startswith(OWN_MODULES) and _numeric(f, hint) and field_range(f) is None]
    assert not undeclared, f"declare a range with framework.config.ranged(...): {undeclared}"


def test_the_walk_covers_fixed_and_plugin_schemas():
    keys = {key for _, _, key, _ in RANGED}
    assert {"trainer.log_every", "optim.lr", "model.widths", "data.batch_size", "strategy.zero_stage",
            "algorithm.lam", "data.channels"} <= keys


@pytest.mark.parametrize("group,name", [(g, n) for g, n, _, _ in _schemas()],
                         ids=[f"{g}={n}" if g else "fixed" for g, n, _, _ in _schemas()])
def test_defaults_lie_inside_their_ranges(group, name):
    validate(_composed(group, name))


@pytest.mark.parametrize("group,name,key,valid", RANGED,
                         ids=[f"{g}={n}:{k}" if g else k for g, n, k, _ in RANGED])
def test_out_of_range_value_fails_naming_key_value_and_range(group, name, key, valid):
    for bad in _outside(valid):
        cfg = _composed(group, name)
        is_list = isinstance(OmegaConf.select(cfg, key), ListConfig)
        try:
            OmegaConf.update(cfg, key, [bad] if is_list else bad, merge=False)
        except ValidationError:  # a list key whose default is None: the schema types it as a list
            is_list = True
            OmegaConf.update(cfg, key, [bad], merge=False)
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        named = f"{key}[0]=" if is_list else f"{key}="
        assert named in str(err.value) and f"must be {valid}" in str(err.value), str(err.value)


def test_message_names_key_value_and_valid_range(compose):
    with pytest.raises(ConfigError, match=r"^trainer\.log_every=0: must be >= 1$"):
        compose("trainer.log_every=0")
    with pytest.raises(ConfigError, match=r"optim\.momentum=1\.0: must be in \[0, 1\)"):
        compose("optim.momentum=1.0")


def test_every_value_out_of_range_is_reported_at_once(compose):
    with pytest.raises(ConfigError) as err:
        compose("optim.lr=0", "model.widths=[8,0]", "data.num_workers=-1")
    lines = str(err.value).splitlines()
    assert "optim.lr=0.0: must be > 0" in lines
    assert "model.widths[1]=0: must be >= 1" in lines
    assert "data.num_workers=-1: must be >= 0" in lines


def test_non_numbers_and_non_finite_floats_are_refused(compose):
    with pytest.raises(ConfigError, match=r"optim\.lr=nan: must be a finite number > 0"):
        compose("optim.lr=nan")
    with pytest.raises(ConfigError, match=r"trainer\.grad_clip=inf: must be a finite number >= 0"):
        compose("trainer.grad_clip=inf")
    with pytest.raises(ConfigError, match=r"model\.widths\[0\]='a': must be a number >= 1"):
        compose("model.widths=[a]")


def test_optional_keys_accept_none(compose):
    assert compose("data.limit=null").data.limit is None
    assert compose("algorithm=gradsplit", "algorithm.pairwise_eps=null").algorithm.pairwise_eps is None


def test_boundary_values_are_valid(compose):
    cfg = compose("trainer.ckpt_every=0", "trainer.keep_last=0", "optim.min_lr_ratio=1.0",
                  "trainer.log_every=1")
    assert (cfg.trainer.ckpt_every, cfg.trainer.keep_last, cfg.trainer.log_every) == (0, 0, 1)
    assert compose("data=faces", "data.channels=1").data.channels == 1


@dataclass
class ProbeConfig(AlgorithmConfig):
    """A third-party plugin declaring ranges both ways plugin authors can."""

    name: str = "range_probe"
    steps: int = field(default=3, metadata={"range": (1, None)})
    weight: float = ranged(0.5, gt=0, le=1)
    free: int = -7  # no range declared: not checked


def test_third_party_plugin_declares_ranges_with_field_metadata(compose):
    register = ALGORITHMS.register("range_probe", impl="tests.test_config_ranges:ProbeConfig", override=True)
    register(ProbeConfig)
    try:
        cfg = compose()
        OmegaConf.set_struct(cfg, False)
        cfg.algorithm = {"name": "range_probe", "steps": 0, "weight": 0.0, "free": -7}
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert str(err.value).splitlines() == ["algorithm.steps=0: must be >= 1",
                                               "algorithm.weight=0.0: must be in (0, 1]"]
        cfg.algorithm = {"name": "range_probe"}
        assert validate(cfg).algorithm.free == -7
    finally:
        ALGORITHMS.unregister("range_probe")


def test_ranged_needs_exactly_one_bound_per_side():
    with pytest.raises(TypeError, match="ge | gt"):
        ranged(1, ge=0, gt=0)
    with pytest.raises(TypeError, match="a bound"):
        ranged(1)
    assert str(field_range(ProbeConfig.__dataclass_fields__["weight"])) == "in (0, 1]"
    assert str(Range(choices=(1, 3))) == "one of 1, 3" and 2 not in Range(choices=(1, 3))
    assert math.pi not in Range(0, math.pi, high_open=True)
