"""``medley`` command: train | prepare | list | eval."""

from __future__ import annotations

import argparse
import sys

USAGE = """usage: medley <command> [args]

commands:
  train [overrides]                 train (Hydra overrides, e.g. algorithm=equal_weight trainer.max_steps=100)
  prepare NAME [--out DIR] [--limit N] [--min-shards N] [key=value ...]
                                    write a dataset's shards + manifest.json
  list algorithms|strategies|datasets|matrix
  eval RUN_DIR|CHECKPOINT [--split test] [--out FILE]
"""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        from launchers import train

        sys.argv = [sys.argv[0]] + rest
        train.run()
    elif command == "prepare":
        prepare_command(rest)
    elif command == "list":
        list_command(rest)
    elif command == "eval":
        from framework.evaluate import eval_command

        eval_command(rest)
    else:
        sys.exit(f"medley: unknown command '{command}'\n{USAGE}")


def list_command(args: list[str]) -> None:
    from framework.registry import ALGORITHMS, DATASETS, STRATEGIES

    what = args[0] if args else "algorithms"
    regs = {"algorithms": ALGORITHMS, "strategies": STRATEGIES, "datasets": DATASETS}
    if what == "matrix":
        print(support_matrix())
        return
    if what not in regs:
        sys.exit(f"medley list: unknown '{what}' (algorithms | strategies | datasets | matrix)")
    reg = regs[what]
    for name in reg.names():
        entry = reg.get(name)
        doc = (entry.config.__doc__ or "").strip().splitlines()
        doc = doc[0] if doc and not doc[0].startswith(entry.config.__name__ + "(") else ""
        print(f"{name:24s} {doc}")


def support_matrix() -> str:
    """Markdown table: which algorithm runs under which strategy (from declared capabilities)."""
    from framework.registry import ALGORITHMS, STRATEGIES

    strategies = STRATEGIES.names()
    lines = ["| algorithm | " + " | ".join(strategies) + " | manual optimization |",
             "|---" * (len(strategies) + 2) + "|"]
    for name in ALGORITHMS.names():
        caps = ALGORITHMS.get(name).load().capabilities
        cells = ["yes" if s in caps.strategies else "no" for s in strategies]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if caps.manual_optimization else 'no'} |")
    return "\n".join(lines)


def prepare_command(args: list[str]) -> None:
    import logging

    from omegaconf import OmegaConf

    from framework.config import plugin_config
    from framework.registry import DATASETS, RegistryError

    parser = argparse.ArgumentParser(prog="medley prepare")
    parser.add_argument("name")
    parser.add_argument("--out", help="output directory (default: <data_root>/<name>)")
    parser.add_argument("--limit", type=int, default=None, help="cap samples per split (tests)")
    parser.add_argument("--min-shards", type=int, default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--force", action="store_true")
    ns, extra = parser.parse_known_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        DATASETS.get(ns.name)
    except RegistryError as exc:
        sys.exit(f"medley prepare: {exc}")
    node = OmegaConf.from_dotlist([f"name={ns.name}", *extra])
    if ns.limit is not None:
        node.limit = ns.limit
    if ns.min_shards is not None:
        node.min_shards = ns.min_shards
    try:
        cfg = plugin_config(node, DATASETS)
    except Exception as exc:
        sys.exit(f"medley prepare: {exc}")
    from framework.data.module import prepare, prepared_dir

    data_root = ns.data_root or OmegaConf.create({"d": "${oc.env:MEDLEY_DATA,'~/.cache/medley/data'}"}).d
    out = prepare(cfg, ns.out or prepared_dir(cfg, data_root), force=ns.force)
    print(out)


if __name__ == "__main__":
    main()
