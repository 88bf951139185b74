"""``medley`` command: train | prepare | list | eval, plus the commands plugins contribute.

A plugin adds ``medley NAME`` through the entry-point group ``medley.commands``
(``NAME = "package.module:function"``); the function receives the remaining arguments as a
list. Entry points are only read, not imported, to print the help, so ``medley --help`` stays
torch-free.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

COMMAND_GROUP = "medley.commands"

USAGE = """usage: medley <command> [args]

commands:
  train [overrides]                 train (Hydra overrides, e.g. algorithm=equal_weight trainer.max_steps=100)
  prepare NAME [--out DIR] [--limit N] [--min-shards N] [--src DIR] [--domain NAME]
               [--preview out.png] [--force] [key=value ...]
                                    write a dataset's shards + manifest.json
  list algorithms|strategies|datasets|matrix
  eval RUN_DIR|CHECKPOINT [--split test] [--out FILE] [overrides]
  report RUN_DIR|CHECKPOINT [RUN_DIR ...] [--out DIR] [--baseline RUN] [--no-algorithm] [overrides]
                                    PNG plots, report.md comparing runs (Δm), the algorithm's figures
"""

BUILTIN = ("train", "prepare", "list", "eval", "report")


def plugin_commands() -> dict[str, EntryPoint]:
    """``medley.commands`` entry points by name; a name that shadows a built-in command fails."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=COMMAND_GROUP):
        if ep.name in BUILTIN:
            sys.exit(f"medley: entry point '{ep.name} = {ep.value}' (group {COMMAND_GROUP}) shadows the "
                     f"built-in command '{ep.name}'; rename it in its package's entry points")
        found[ep.name] = ep
    return found


def usage(plugins: dict[str, EntryPoint]) -> str:
    if not plugins:
        return USAGE
    lines = [f"  {name:32s}  from {ep.value} (medley {name} --help)" for name, ep in sorted(plugins.items())]
    return USAGE + "\nplugin commands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = plugin_commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(plugins))
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        from launchers import train

        sys.argv = [sys.argv[0]] + rest
        train.run()
    elif command == "prepare":
        from framework.data.cli import prepare_main

        prepare_main(rest)
    elif command == "list":
        list_command(rest)
    elif command == "eval":
        from framework.evaluate import eval_command

        eval_command(rest)
    elif command == "report":
        from framework.report import report_command

        report_command(rest)
    elif command in plugins:
        plugins[command].load()(rest)
    else:
        known = ", ".join([*BUILTIN, *sorted(plugins)])
        sys.exit(f"medley: unknown command '{command}' (commands: {known})\n\n{usage(plugins)}")


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
    """Markdown table: which algorithm runs under which strategy: the declared capabilities minus what
    the algorithm's behaviour rules out (``framework.algorithm.supported_strategies``; phases as
    declared with the algorithm's default config)."""
    from framework.algorithm import supported_strategies
    from framework.registry import ALGORITHMS, STRATEGIES

    strategies = STRATEGIES.names()
    lines = ["| algorithm | " + " | ".join(strategies) + " | manual optimization |",
             "|---" * (len(strategies) + 2) + "|"]
    for name in ALGORITHMS.names():
        entry = ALGORITHMS.get(name)
        algo_cls = entry.load()
        caps = algo_cls.capabilities
        try:
            excluded = supported_strategies(algo_cls, algo_cls(entry.config(), None))
        except Exception:  # phases() needs the full run config: decide from the class alone
            excluded = supported_strategies(algo_cls)
        cells = ["yes" if s in caps.strategies and s not in excluded else "no" for s in strategies]
        manual = "yes" if caps.manual_optimization else "no"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {manual} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
