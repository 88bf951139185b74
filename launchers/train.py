"""``python -m launchers.train [overrides]`` (= ``medley train``): compose, validate, train.

Plugins are loaded and the config validated before torch is imported, so a typo fails in
well under a second. Under ``accelerate launch`` / ``torchrun`` / ``deepspeed`` every rank runs
this same entry point with the same arguments; capability and launcher checks run before the
strategy starts a process group.

Exit status: 0 done; 75 (``PREEMPTED_EXIT_CODE``) stopped by SIGTERM after writing a checkpoint
(rerun with ``resume=auto``); 1 anything else, with the reason on stderr.
"""

from __future__ import annotations

import os
import re
import sys

import hydra
from omegaconf import DictConfig

from framework.config import CONFIG_DIR, ConfigError, compose_overrides, register_schema, validate
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


def check_overrides(argv: list[str]) -> None:
    """Compose once before ``hydra.main`` does, to report a mistyped key with the valid keys
    closest to it: Hydra's own answer ("To append to your config use +key=value") is one the
    schema then refuses. Other composition problems are left to Hydra's report, and so are the
    modes this compose would not mirror (multirun sweeps, extra config directories)."""
    from hydra._internal.utils import get_args_parser  # Hydra's parser of its own command line

    args, _ = get_args_parser().parse_known_args(argv)
    if args.multirun or args.config_dir or args.config_path or args.experimental_rerun:
        return
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    try:
        compose_overrides(args.overrides, args.config_name or "train")
    except ConfigError as exc:
        sys.exit(f"medley: config error: {exc}")
    except Exception:  # Hydra meets it again in hydra.main and reports it in its own words
        return


def prepare_cli() -> None:
    sys.argv = strip_local_rank(sys.argv)
    try:
        load_plugins()
    except RegistryError as exc:
        sys.exit(f"medley: plugin error: {exc}")
    register_schema()
    check_overrides(sys.argv[1:])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        cfg = validate(cfg)
        from framework.run import check_capabilities

        check_capabilities(cfg)
    except ConfigError as exc:
        sys.exit(f"medley: config error: {exc}")
    from framework.checkpoint import CheckpointError, CheckpointWriteError
    from framework.preemption import PREEMPTED_EXIT_CODE, Preempted
    from framework.run import RunInUseError, build_strategy, print_summary, train

    strategy = build_strategy(cfg)
    preempted = None
    try:
        summary = train(cfg, strategy=strategy)
    except ConfigError as exc:  # e.g. ranks that composed different configs
        sys.exit(f"medley: config error (rank {strategy.rank}): {exc}")
    except (RunInUseError, CheckpointError, CheckpointWriteError) as exc:
        sys.exit(f"medley: error (rank {strategy.rank}): {exc}")
    except Preempted as exc:  # every rank wrote its part of the checkpoint: leave together
        preempted = exc
    finally:
        strategy.teardown()
    if preempted is not None:
        print(f"medley: {preempted}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    print_summary(summary)


def run() -> None:
    prepare_cli()
    try:
        main()
    except SystemExit as exc:  # Hydra reports a failed run with sys.exit(1)
        code = exc.code
    else:
        code = 0
    if "framework.strategies.process_group" in sys.modules:  # a process group may have run
        from framework.strategies.process_group import exit_process

        exit_process(code)  # past the communication backend's native threads (process_group.py)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run()
