"""``medley`` command: train | prepare | list | eval."""

from __future__ import annotations

import argparse
import sys

USAGE = """usage: medley <command> [args]

commands:
  train [overrides]                 train (Hydra overrides, e.g. algorithm=equal_weight trainer.max_steps=100)
  prepare NAME [--out DIR] [--limit N] [--min-shards N] [--src DIR] [--domain NAME]
               [--preview out.png] [--force] [key=value ...]
                                    write a dataset's shards + manifest.json
  list algorithms|strategies|datasets|matrix
  eval RUN_DIR|CHECKPOINT [--split test] [--out FILE]
  gradsplit-relations [--out FILE] [--steps N] [--eps E] [overrides]
                                    pairwise-transfer table for algorithm.relation=pairwise
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
    elif command == "gradsplit-relations":
        from algorithms.gradsplit.pairwise import main as relations

        relations(rest)
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
    from framework.data.cli import prepare_main

    prepare_main(args)


if __name__ == "__main__":
    main()
