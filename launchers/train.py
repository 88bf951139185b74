"""``python -m launchers.train [overrides]`` (= ``medley train``): compose, validate, train.

Plugins are loaded and the config validated before torch is imported, so a typo fails in
well under a second. Under ``accelerate launch`` / ``torchrun`` / ``deepspeed`` every rank runs
this same entry point with the same arguments; capability and launcher checks run before the
strategy starts a process group.
"""

from __future__ import annotations

import os
import re
import sys

import hydra
from omegaconf import DictConfig

from framework.config import CONFIG_DIR, ConfigError, register_schema, validate
from framework.registry import RegistryError, load_plugins

_LOCAL_RANK_ARG = re.compile(r"^--local[_-]rank(=(\d+))?$")


def strip_local_rank(argv: list[str]) -> list[str]:
    """The ``deepspeed`` launcher appends ``--local_rank=N``, which Hydra would reject; the same
    value is in ``LOCAL_RANK`` (``deepspeed --no_local_rank`` avoids the argument altogether)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        match = _LOCAL_RANK_ARG.match(arg)
        if match is None:
            out.append(arg)
            continue
        value = match.group(2)
        if value is None and i + 1 < len(argv):
            value, skip = argv[i + 1], True
        if value is not None:
            os.environ.setdefault("LOCAL_RANK", value)
    return out


def prepare_cli() -> None:
    sys.argv = strip_local_rank(sys.argv)
    try:
        load_plugins()
    except RegistryError as exc:
        sys.exit(f"medley: plugin error: {exc}")
    register_schema()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        cfg = validate(cfg)
        from framework.run import check_capabilities

        check_capabilities(cfg)
    except ConfigError as exc:
        sys.exit(f"medley: config error: {exc}")
    from framework.run import build_strategy, print_summary, train

    strategy = build_strategy(cfg)
    try:
        summary = train(cfg, strategy=strategy)
    except ConfigError as exc:  # e.g. ranks that composed different configs
        sys.exit(f"medley: config error (rank {strategy.rank}): {exc}")
    finally:
        strategy.teardown()
    print_summary(summary)


def run() -> None:
    prepare_cli()
    main()


if __name__ == "__main__":
    run()
