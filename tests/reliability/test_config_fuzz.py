"""Config fuzz: every schema leaf set to a value of the wrong type, a value out of its range (or
not among its choices), and under a mistyped name. Each must fail before anything is set up,
with a message naming the full key, the value, and the valid range or choices (a mistyped
name: the key meant). In-process for every leaf; through ``python -m launchers.train`` (exit
status, < 5 s, nothing written) for a sample in CI and for every case in full mode."""

from __future__ import annotations

import subprocess
import sys
import time
import typing

import pytest

from framework.compose import compose
from framework.config import _CHOICES, ConfigError, _schemas, field_range, schema_leaves
from framework.registry import ALGORITHMS, DATASETS, STRATEGIES
from tests.conftest import REPO
from tests.helpers import reliability as R

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(R.TIMEOUT_S)]
PLUGINS = {"algorithm": ALGORITHMS, "data": DATASETS, "strategy": STRATEGIES}


def _base(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is typing.Union else hint
    return typing.get_origin(base) or base


def wrong_type(hint) -> str | None:
    return {int: "abc", float: "abc", bool: "maybe", str: "[1,2]", list: "abc", dict: "abc"}.get(_base(hint))


def out_of_range(key: str, f) -> tuple[str, str] | None:
    """``(value, what the message must name)``, or None when the key has no range or choices."""
    if key in _CHOICES:
        return "bogus", _CHOICES[key][0]
    if key.endswith(".name") and key.partition(".")[0] in PLUGINS:
        return "bogus", PLUGINS[key.partition(".")[0]].names()[0]
    valid = field_range(f)
    if valid is None or valid.choices:
        return (f"{max(valid.choices) + 1}", str(valid)) if valid else None
    if valid.low is not None:
        value = valid.low if valid.low_open else valid.low - 1
    else:
        value = valid.high if valid.high_open else valid.high + 1
    value = int(value) if float(value).is_integer() and _base(f.type) is not float else value
    if _base(f.type) is list:
        return f"[{value}]", str(valid)
    return str(value), str(valid)


def typo(key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    swapped = leaf[:-2] + leaf[-1] + leaf[-2] if len(leaf) > 2 else leaf + "x"
    return f"{parent}.{swapped}" if parent else swapped


def cases(plugin_overrides: list[str]) -> list[tuple[str, str, tuple[str, ...], list[str]]]:
    """``(kind, key, strings the message must hold, overrides)`` for every leaf of that setting."""
    cfg = compose(plugin_overrides)
    out = []
    for prefix, cls, _ in _schemas(cfg):
        for key, f, hint in schema_leaves(cls, prefix):
            if key in ("paths.data_root", "paths.run_root", "paths.run_dir"):  # the test sets these
                continue
            bad = wrong_type(hint)
            if bad is not None:
                out.append(("wrong type", key, (key, bad.strip("[]")), [*plugin_overrides, f"{key}={bad}"]))
            rng = out_of_range(key, f)
            if rng is not None:
                out.append(("out of range", key, (key, rng[0].strip("[]"), rng[1]), [*plugin_overrides, f"{key}={rng[0]}"]))
            out.append(("typo", key, (typo(key), key), [*plugin_overrides, f"{typo(key)}=1"]))
    return out


def settings() -> list[list[str]]:
    """The default config and DeepSpeed's keys; in full mode each registered plugin in turn
    (CI takes 6 cases of each kind from each setting)."""
    if not R.FULL:
        return [[], ["strategy=deepspeed"]]
    out = [[]]
    for group, reg in PLUGINS.items():
        out += [[f"{group}={name}"] for name in reg.names() if not reg.get(name).source.startswith("tests.")
                and (REPO / "configs" / group / f"{name}.yaml").exists()]
    return out


def check_in_process(kind: str, key: str, needed: tuple[str, ...], overrides: list[str]) -> str | None:
    t0 = time.time()
    try:
        compose(overrides)
    except ConfigError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - anything but a ConfigError is a failure here
        return f"{kind} {key}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    else:
        return f"{kind} {key}: accepted {overrides[-1]}"
    missing = [n for n in needed if n not in message]
    if missing or time.time() - t0 > 5:
        return f"{kind} {key}: message lacks {missing}: {message}"
    return None


def test_every_leaf_wrong_type_out_of_range_and_mistyped_fails_naming_key_value_and_range():
    failed, counts = [], {}
    for plugin in settings():
        every = cases(plugin)
        picked = every if R.FULL else [c for kind in ("wrong type", "out of range", "typo")
                                       for c in R.pick([c for c in every if c[0] == kind], 6)]
        for kind, key, needed, overrides in picked:
            counts[kind] = counts.get(kind, 0) + 1
            problem = check_in_process(kind, key, needed, overrides)
            if problem:
                failed.append(problem)
    total = sum(counts.values())
    R.record("config fuzz", "validation, every leaf" if R.FULL else "validation, a spread of leaves",
             ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), total, total - len(failed),
             ("ConfigError naming the full key", "names the value", "names the range or choices / the key meant"))
    assert not failed, f"{len(failed)} of {total}:\n" + "\n".join(failed)


def test_the_cli_exits_nonzero_within_5s_before_setting_anything_up(tmp_path):
    all_cases = [c for plugin in ([[]] if not R.FULL else settings()) for c in cases(plugin)]
    picked = R.pick(all_cases, 3)
    failed = []
    for n, (kind, key, needed, overrides) in enumerate(picked):
        runs, data = tmp_path / f"runs{n}", tmp_path / f"data{n}"
        t0 = time.time()
        done = subprocess.run([sys.executable, "-m", "launchers.train", *overrides, f"paths.run_root={runs}",
                               f"paths.data_root={data}"], cwd=REPO, env=R.base_env(data), capture_output=True,
                              text=True, timeout=60)
        took = time.time() - t0
        missing = [x for x in needed if x not in done.stderr]
        if done.returncode == 0 or took > 5 or missing or runs.exists() or data.exists():
            failed.append(f"{kind} {key}: exit {done.returncode} after {took:.1f} s, lacks {missing}, "
                          f"wrote {[p for p in (runs, data) if p.exists()]}: {done.stderr[-600:]}")
    R.record("config fuzz", "`python -m launchers.train` (exit status, < 5 s, nothing written)",
             "a wrong-type, out-of-range or mistyped override", len(picked), len(picked) - len(failed),
             ("non-zero exit", "< 5 s", "message names key, value and range", "no run or data directory"))
    assert not failed, "\n".join(failed)
