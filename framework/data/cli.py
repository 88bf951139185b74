"""``medley prepare``: argument handling, so the engine's CLI forwards with one line.

    medley prepare NAME [--out DIR] [--data-root DIR] [--limit N] [--min-shards N] [--force]
                        [--src DIR ...] [--domain NAME ...] [--preview out.png] [key=value ...]

``--src``/``--domain`` fill the ``src``/``domains`` keys of datasets that read folders
(``faces``); ``--preview`` writes a grid of samples after preparing; ``key=value`` sets any
other key of the dataset's config (e.g. ``image_size=32``).
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_config(
    name: str,
    limit: int | None,
    min_shards: int | None,
    src: list[str] | None,
    domains: list[str] | None,
    overrides: list[str],
):
    from omegaconf import OmegaConf

    from framework.config import plugin_config
    from framework.registry import DATASETS

    node = OmegaConf.from_dotlist([f"name={name}", *overrides])
    if limit is not None:
        node.limit = limit
    if min_shards is not None:
        node.min_shards = min_shards
    if src:
        node.src = list(src)
    if domains:
        node.domains = list(domains)
    return plugin_config(node, DATASETS)


def prepare_main(args: list[str]) -> None:
    from omegaconf import OmegaConf

    from framework.registry import DATASETS, RegistryError

    parser = argparse.ArgumentParser(prog="medley prepare")
    parser.add_argument("name")
    parser.add_argument("--out", help="output directory (default: <data_root>/<name>[-<hash>])")
    parser.add_argument("--data-root", default=None, help="default: $MEDLEY_DATA or ~/.cache/medley/data")
    parser.add_argument(
        "--limit", type=int, default=None, help="cap samples per split (small copies for tests)"
    )
    parser.add_argument("--min-shards", type=int, default=None, help="write every split as at least N shards")
    parser.add_argument("--force", action="store_true", help="prepare again even if the manifest exists")
    parser.add_argument("--src", action="append", help="an <identity>/<image> folder (faces); repeatable")
    parser.add_argument("--domain", action="append", help="domain name for each --src folder")
    parser.add_argument("--preview", help="write a PNG grid of samples with their labels")
    ns, extra = parser.parse_known_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    unknown = [a for a in extra if "=" not in a]
    if unknown:
        sys.exit(f"medley prepare: unrecognized arguments {unknown} (dataset keys are given as key=value)")
    try:
        DATASETS.get(ns.name)
    except RegistryError as exc:
        sys.exit(f"medley prepare: {exc}")
    try:
        cfg = build_config(ns.name, ns.limit, ns.min_shards, ns.src, ns.domain, extra)
    except Exception as exc:  # noqa: BLE001 - a config error is reported, not raised
        sys.exit(f"medley prepare: {exc}")
    from framework.data.module import prepare, prepared_dir
    from framework.data.sources import SourceUnavailable

    data_root = ns.data_root or OmegaConf.create({"d": "${oc.env:MEDLEY_DATA,'~/.cache/medley/data'}"}).d
    try:
        out = prepare(cfg, ns.out or prepared_dir(cfg, data_root), force=ns.force)
    except SourceUnavailable as exc:
        sys.exit(f"medley prepare {ns.name}: {exc}")
    print(out)
    if ns.preview:
        from framework.data.preview import preview

        print(preview(out, ns.preview, seed=cfg.seed))


if __name__ == "__main__":
    prepare_main(sys.argv[1:])
