"""From a data config to prepared shards and the loaders of one rank.

``DataModule(cfg, data_root, seed, rank, world)`` prepares the dataset on first use (under a
file lock), verifies the shards it will read against the manifest and builds one of three
training streams, chosen by the manifest and the config:

* a single split ``train`` (``SourceCursor`` in batch mode: equal steps per rank, exact resume);
* a weighted mixture of the manifest's ``sources`` (``MixedStream``), optionally restricted
  per phase with ``data.phase_sources``;
* either of the two restricted per phase to some classes with ``data.phase_classes``
  (class-incremental experiences);
* ``data.episodic=true``: per step ``{domain: P×K batch}`` (``EpisodeSampler``).

Named auxiliary streams (``data.aux``) are exposed through ``aux_iterators()``; the trainer
offers them to algorithms as ``ctx.aux(name)``. Batch formats: ``framework/data/README.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from framework.config import DataConfig
from framework.data.cursor import SkipStats, SourceCursor
from framework.data.episodic import BalancedSampler, EpisodeSampler, IndexedSplit
from framework.data.info import DataInfo
from framework.data.loader import (
    EvalStream,
    StreamSpec,
    check_enough_shards,
    concat_batches,
    make_loader,
    take_rows,
)
from framework.data.mixing import MixedStream, RowBuffer
from framework.data.shards import MANIFEST, read_manifest, reprepare_hint, shard_location, verify_shards
from framework.registry import DATASETS

log = logging.getLogger(__name__)

#: keys that only change how prepared shards are read; every other key selects the prepared copy
LOADER_KEYS = ({f.name for f in dataclasses.fields(DataConfig)} - {"name", "limit"}) | {
    "verify",
    "mix_weights",
    "mix_unit",
    "train_sources",
    "phase_sources",
    "phase_classes",
    "episodic",
    "episode_p",
    "episode_k",
    "episode_group",
    "holdout_domain",
    "aux",
    "allow_pipe_shards",
}
_CHOICES = {
    "verify": ("sha256", "size", "none"),
    "mix_unit": ("batch", "sample"),
    "order": ("local", "global"),
    "on_error": ("raise", "skip"),
}


def prepare_keys(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LOADER_KEYS and k != "name"}


def prepared_dir(cfg: Any, data_root: str | Path) -> Path:
    """``<data_root>/<name>`` for the default construction, else ``<name>-<hash of its prepare keys>``."""
    keys = prepare_keys(cfg)
    root = Path(data_root).expanduser()
    if keys == prepare_keys(type(cfg)()):
        return root / cfg.name
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return root / f"{cfg.name}-{digest}"


def prepare(cfg: Any, out_dir: Path, force: bool = False) -> Path:
    """Write the dataset's shards once (file lock: concurrent ranks or nodes wait, then reuse)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if (out_dir / MANIFEST).exists() and not force:
            return out_dir
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.time()
        log.info("preparing dataset %s into %s", cfg.name, out_dir)
        DATASETS.get(cfg.name).load()(cfg, tmp, limit=cfg.limit)
        manifest = read_manifest(tmp)
        manifest["prepare"] = {"keys": prepare_keys(cfg), "seconds": round(time.time() - t0, 1)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        log.info("prepared %s in %.1f s", cfg.name, time.time() - t0)
    return out_dir


class DataModule:
    """Train, auxiliary and eval loaders of one rank; the data position is part of the checkpoint."""

    def __init__(self, cfg: Any, data_root: str | Path, seed: int, rank: int = 0, world: int = 1):
        self.cfg, self.seed, self.rank, self.world = cfg, seed, rank, world
        for key, allowed in _CHOICES.items():
            if getattr(cfg, key, allowed[0]) not in allowed:
                raise ValueError(f"data.{key}: '{getattr(cfg, key)}' is not one of {', '.join(allowed)}")
        self.root = prepare(cfg, prepared_dir(cfg, data_root))
        self.manifest = read_manifest(self.root, allow_pipe=bool(self._opt("allow_pipe_shards", False)))
        self.tasks = tuple(self.manifest["tasks"])
        self.attrs = tuple(self.manifest.get("extra", {}).get("attributes", {}))
        self.skipped = SkipStats()
        self.info = DataInfo.from_manifest(self.manifest)
        self.sources = self._training_sources()
        self.info.extra["train_sources"] = list(self.sources)
        self.refused: dict[str, dict[str, str]] = {}  # split -> {file: why}, on_error=skip only
        self._check_present(*self.sources.values(), *self._aux_splits(), *self._eval_splits())
        self._verify(*self.sources.values())
        self.cursor: SourceCursor | None = None
        self.mixed: MixedStream | None = None
        self.classes: dict[str, torch.Tensor] = {}  # task -> classes the current phase trains on
        self.episodes: EpisodeSampler | None = None
        if self._opt("episodic", False):
            self._build_episodes()
        elif list(self.sources) == ["train"] and "sources" not in self.manifest:
            spec = self.spec("train", cfg.batch_size, shuffle=True)
            check_enough_shards(spec)
            self.cursor = SourceCursor(spec, "batches", self.skipped, self._loader_seed())
        else:
            self._build_mixture()
        self.aux: dict[str, BalancedSampler] = {}
        for name, aux_cfg in (self._opt("aux", {}) or {}).items():
            self._build_aux(name, dict(aux_cfg))
        self._load_side_files()

    # ------------------------------------------------------------------------- helpers
    def _opt(self, key: str, default: Any) -> Any:
        return getattr(self.cfg, key, default)

    def _loader_seed(self) -> int:
        return self.seed * 1_000_003 + self.rank

    def _aux_splits(self) -> list[str]:
        return [dict(a).get("split", n) for n, a in (self._opt("aux", {}) or {}).items()]

    def _eval_splits(self) -> list[str]:
        return [s for s in getattr(self.cfg, "eval_splits", ()) or () if s in self.manifest["splits"]]

    def _check_present(self, *splits: str) -> None:
        """Stat every shard of the splits this run reads (cheap): a missing or resized shard is
        found now, not when an epoch reaches it hours later. Hashing stays in ``_verify``."""
        if self._opt("verify", "sha256") != "none":
            self._refuse(splits, "size")

    def _verify(self, *splits: str) -> None:
        self._refuse(splits, self._opt("verify", "sha256"))

    def _refuse(self, splits: tuple[str, ...], mode: str) -> None:
        """``on_error=raise``: a bad shard raises, named. ``skip``: it is kept out of the run and
        its samples count as lost where it would have been read; a split without one good shard
        still raises, since nothing could replace it."""
        for split in dict.fromkeys(s for s in splits if s in self.manifest["splits"]):
            bad = verify_shards(self.root, self.manifest, split, mode, self._opt("on_error", "raise"))
            known = self.refused.setdefault(split, {})
            for file, why in bad.items():
                if file not in known and self.rank == 0:
                    log.warning(
                        "data.on_error=skip: shard %s %s; its samples are skipped", shard_location(self.root, file), why
                    )
                known[file] = why
            shards = self.manifest["splits"][split]["shards"]
            if known and len(known) == len(shards):
                raise ValueError(
                    f"split '{split}': all {len(shards)} shards are missing or differ from "
                    f"{self.root / MANIFEST} (e.g. {next(iter(known))} {next(iter(known.values()))}); "
                    f"data.on_error=skip has nothing left to read: {reprepare_hint(self.root, self.manifest)}"
                )

    def _training_sources(self) -> dict[str, str]:
        """Source name → split; leaves out ``data.holdout_domain`` and unselected sources."""
        declared = {n: s["split"] for n, s in self.manifest.get("sources", {}).items()} or {"train": "train"}
        chosen = list(self._opt("train_sources", []) or declared)
        unknown = [n for n in chosen if n not in declared]
        if unknown:
            raise ValueError(
                f"data.train_sources: unknown source(s) {unknown}; {self.cfg.name} has {list(declared)}"
            )
        holdout = self._opt("holdout_domain", "")
        if holdout:
            if holdout not in declared:
                raise ValueError(
                    f"data.holdout_domain: '{holdout}' is not a domain of {self.cfg.name} ({list(declared)})"
                )
            chosen = [n for n in chosen if n != holdout]
        return {n: declared[n] for n in chosen}

    def spec(self, split: str, batch_size: int, shuffle: bool) -> StreamSpec:
        if split not in self.manifest["splits"]:
            raise KeyError(
                f"split '{split}' not in {self.root / MANIFEST} (has {list(self.manifest['splits'])})"
            )
        c = self.cfg
        return StreamSpec(
            root=self.root,
            shards=self.manifest["splits"][split]["shards"],
            batch_size=batch_size,
            seed=self.seed,
            rank=self.rank,
            world=self.world,
            num_workers=c.num_workers if shuffle else 0,
            shuffle=shuffle,
            buffer=c.shuffle_buffer,
            order=c.order if shuffle else "local",
            on_error=c.on_error,
            tasks=self.tasks,
            name=split,
            attrs=self.attrs,
            refused=dict(self.refused.get(split, {})),
            verify=self._opt("verify", "sha256"),
        )

    def _build_mixture(self) -> None:
        if self.cfg.order == "global":
            raise ValueError("data.order=global needs a single training split; this dataset mixes sources")
        buffers = {}
        for name, split in self.sources.items():
            spec = self.spec(split, self.cfg.batch_size, shuffle=True)
            check_enough_shards(spec)
            buffers[name] = RowBuffer(
                SourceCursor(spec, "rows", self.skipped, self._loader_seed() + len(buffers))
            )
        counts = {n: self.manifest["splits"][s]["count"] for n, s in self.sources.items()}
        weights = dict(self._opt("mix_weights", {}) or {})
        unknown = [n for n in weights if n not in counts]
        if unknown:
            raise ValueError(f"data.mix_weights: unknown source(s) {unknown} (sources: {list(counts)})")
        weights = {n: float(weights.get(n, counts[n] if not weights else 0.0)) for n in counts}
        if sum(weights.values()) <= 0:
            raise ValueError(f"data.mix_weights: all zero for the sources {list(counts)}")
        self.mixed = MixedStream(
            buffers, weights, self.cfg.batch_size, self._opt("mix_unit", "sample"), self.seed
        )
        self.mixed.set_active([n for n in weights if weights[n] > 0])
        if self.rank == 0:
            total = sum(weights.values())
            log.info(
                "mixing %s (unit %s)",
                ", ".join(f"{n} {w / total:.2f}" for n, w in weights.items()),
                self.mixed.unit,
            )

    def _build_episodes(self) -> None:
        group = self._opt("episode_group", "") or self.manifest.get("episodes", {}).get("group", "")
        if not group:
            raise ValueError(
                f"data.episodic: set data.episode_group (a task of {self.cfg.name}: {list(self.tasks)})"
            )
        splits = {n: self._indexed(s) for n, s in self.sources.items()}
        self.episodes = EpisodeSampler(
            splits,
            group,
            self._opt("episode_p", 8),
            self._opt("episode_k", 4),
            self.seed,
            self.rank,
            self.world,
        )
        if self.rank == 0:
            log.info(
                "episodes: %d groups (%s) x %d samples per domain over %s; %s",
                self.episodes.p,
                group,
                self.episodes.k,
                list(splits),
                self.episodes.info,
            )

    def _indexed(self, split: str) -> IndexedSplit:
        """A split read through its index, without the samples of refused shards; random access
        has no epochs, so their samples count as lost once, here."""
        refused = self.refused.get(split, {})
        entry = self.manifest["splits"][split]
        lost = [s for s in entry["shards"] if s["file"] in refused]
        self.skipped.add(
            [(s["file"], s["count"], f"{refused[s['file']]} (refused before reading)") for s in lost]
        )
        return IndexedSplit(self.root, split, entry, self.tasks, self.attrs, refused=refused)

    def _build_aux(self, name: str, aux_cfg: dict) -> None:
        split = aux_cfg.get("split", name)
        if split not in self.manifest["splits"]:
            raise ValueError(f"data.aux.{name}.split: '{split}' not in {list(self.manifest['splits'])}")
        self._verify(split)
        indexed = self._indexed(split)
        self.aux[name] = BalancedSampler(
            indexed,
            int(aux_cfg.get("batch_size", self.cfg.batch_size)),
            str(aux_cfg.get("balance", "")),
            self.seed,
            self.rank,
            name,
        )

    def _load_side_files(self) -> None:
        pairs = self.manifest.get("extra", {}).get("pairs_file")
        if pairs:
            self.info.extra["pairs"] = json.loads((self.root / pairs).read_text())
        holdout = self._opt("holdout_domain", "")
        if holdout:
            self.info.extra["holdout_domain"] = holdout

    # --------------------------------------------------------------------- training stream
    def steps_in_epoch(self, epoch: int) -> int:
        """Batches every rank runs in ``epoch`` (single-split datasets)."""
        if self.cursor is None:
            raise ValueError(f"{self.cfg.name}: epochs are per source when sources are mixed or episodic")
        return self.cursor.steps_in_epoch(epoch)

    def epoch_batches(self) -> Iterator[dict]:
        """Infinite stream of training batches from the recorded position (epoch after epoch)."""
        if self.episodes is not None:
            return iter(self.episodes)
        if self.mixed is not None:
            return self._class_filtered(iter(self.mixed))
        return self._class_filtered(self.cursor.batches())

    def set_phase(self, phase: str) -> None:
        """Restrict mixing to ``data.phase_sources[phase]`` (e.g. one domain per phase) and the rows
        to ``data.phase_classes[phase]`` (e.g. two new digits per experience)."""
        self._set_phase_classes(phase)
        sources = (self._opt("phase_sources", {}) or {}).get(phase)
        if sources is None:
            return
        if self.mixed is None:
            raise ValueError("data.phase_sources needs a dataset with several training sources")
        self.mixed.set_active(list(sources))

    def _set_phase_classes(self, phase: str) -> None:
        """``data.phase_classes: {phase: {task: [class, ...]}}``; a phase not listed trains on every class."""
        wanted = (self._opt("phase_classes", {}) or {}).get(phase)
        self.classes = {}
        if wanted is None:
            return
        if self.episodes is not None:
            raise ValueError("data.phase_classes: episodic batches (data.episodic=true) cannot be restricted to "
                             "classes; use data.episode_group or drop data.phase_classes")
        for task, classes in dict(wanted).items():
            if task not in self.info.tasks:
                raise ValueError(f"data.phase_classes.{phase}: '{task}' is not a task of {self.cfg.name} "
                                 f"(tasks: {list(self.info.tasks)})")
            n = self.info.tasks[task]
            bad = [c for c in classes if not 0 <= int(c) < n]
            if bad or not list(classes):
                raise ValueError(f"data.phase_classes.{phase}.{task}: {list(classes)} must be a non-empty list of "
                                 f"class indices in [0, {n - 1}]")
            self.classes[task] = torch.as_tensor([int(c) for c in classes])

    def _class_filtered(self, stream: Iterator[dict]) -> Iterator[dict]:
        """Batches of ``data.batch_size`` rows of the current phase's classes, cut from the rows of the
        underlying stream in order. Rows of other classes are read and dropped, and so are the
        phase's rows left over when a batch is full: nothing is carried between batches, so the
        underlying stream's checkpointed position stays exact and a resumed run sees the same batches."""
        size = self.cfg.batch_size
        for batch in stream:
            if not self.classes:
                yield batch
                continue
            parts, have, empty = [], 0, 0
            while have < size:
                keep = torch.ones(len(batch["image"]), dtype=torch.bool)
                for task, classes in self.classes.items():
                    keep &= torch.isin(batch["labels"][task], classes)
                if keep.any():
                    parts.append(take_rows(batch, keep.nonzero().squeeze(1)))
                    have += int(keep.sum())
                    empty = 0
                else:
                    empty += 1
                    if empty >= 1000:
                        raise ValueError(f"data.phase_classes: 1000 training batches in a row held no row of "
                                         f"{ {t: c.tolist() for t, c in self.classes.items()} }; check that the "
                                         f"phase's sources contain these classes")
                if have < size:
                    batch = next(stream)
            yield take_rows(concat_batches(parts), slice(0, size))

    def aux_iterators(self) -> dict[str, Iterator[dict]]:
        """Named auxiliary streams (``data.aux``), e.g. a balanced meta set: ``ctx.aux(name)``."""
        return dict(self.aux)

    def verification_pairs(self, split: str, domain: str) -> torch.Tensor:
        """``[N, 3]`` (id_a, id_b, same) of ``split`` rows of ``domain`` (face datasets)."""
        pairs = self.info.extra.get("pairs", {})
        if split not in pairs or domain not in pairs[split]:
            raise KeyError(f"no verification pairs for split '{split}', domain '{domain}' in {self.cfg.name}")
        return torch.tensor(pairs[split][domain], dtype=torch.long).reshape(-1, 3)

    def state_dict(self) -> dict:
        state: dict[str, Any] = {"aux": {n: a.state_dict() for n, a in self.aux.items()}}
        if self.cursor is not None:
            state["train"] = self.cursor.state_dict()
            state["epoch"] = self.cursor.epoch
        if self.mixed is not None:
            state["mixed"] = self.mixed.state_dict()
        if self.episodes is not None:
            state["episodes"] = self.episodes.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.cursor is not None:
            self.cursor.load_state_dict(state["train"])
        if self.mixed is not None:
            self.mixed.load_state_dict(state["mixed"])
        if self.episodes is not None:
            self.episodes.load_state_dict(state["episodes"])
        for name, s in state.get("aux", {}).items():
            if name in self.aux:
                self.aux[name].load_state_dict(s)

    # -------------------------------------------------------------------------- evaluation
    def eval_loader(self, split: str):
        """Every sample of ``split`` exactly once across ranks; padding rows have ``mask=False``."""
        self._verify(split)
        stream = EvalStream(
            self.spec(split, self.cfg.eval_batch_size, shuffle=False), on_errors=self.skipped.add
        )
        return make_loader(stream, 0, self.seed)
