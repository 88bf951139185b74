"""``python -m launchers.train [overrides]`` (= ``medley train``): compose, validate, train.

Plugins are loaded and the config validated before torch is imported, so a typo fails in
well under a second. Under ``accelerate launch`` / ``torchrun`` every rank runs this same
entry point with the same arguments.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from framework.config import CONFIG_DIR, ConfigError, register_schema, validate
from framework.registry import RegistryError, load_plugins


def prepare_cli() -> None:
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
    from framework.run import print_summary, train

    print_summary(train(cfg))


def run() -> None:
    prepare_cli()
    main()


if __name__ == "__main__":
    run()
