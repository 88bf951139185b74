"""Framework overhead: Medley's trainer against a hand-written PyTorch loop, same model, seed,
optimizer, schedule and batches.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py [--steps 60] [--rounds 4] [--tiny] [--quick]

Four arms, run in turn in one process (order alternating per round, the first round dropped as
warm-up; each arm's time is the median step time after its first ``--warmup`` steps):

* ``medley/memory``: ``Trainer.fit`` over batches held in memory (the loop alone);
* ``hand/memory``: a plain loop over the same batches: forward, summed task losses, backward,
  optimizer and scheduler step, ``loss.item()`` every ``trainer.log_every`` steps;
* ``medley/shards``: ``Trainer.fit`` reading the prepared shards (``DataModule``);
* ``hand/shards``: the plain loop reading the same shards through ``webdataset`` + ``DataLoader``;

and, without a model, the two data paths alone (``shards, loader only``: ms per batch).

``ratio`` is the median over rounds of the per-round ratio, ``overhead`` the median of the
per-round differences; the spread of the per-round ratios shows how noisy the machine was. The tiny model (``--tiny``: widths
[4], batch 8) shows the absolute per-step overhead, where the model costs almost nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from framework.hooks import Hook  # noqa: E402
from benchmarks._common import StepClock, compose, interleaved, median, ratio, save, table  # noqa: E402


class MemoryData:
    """A ``DataModule`` whose training stream cycles over batches read once into memory, and whose
    evaluation reads only its first batch (this benchmark times training steps)."""

    def __init__(self, dm: Any, batches: list[dict] | None):
        self.dm, self.batches = dm, batches
        self.info, self.manifest, self.skipped = dm.info, dm.manifest, dm.skipped

    def epoch_batches(self):
        return itertools.cycle(self.batches) if self.batches is not None else self.dm.epoch_batches()

    def eval_loader(self, split: str):
        return itertools.islice(self.dm.eval_loader(split), 1)

    def state_dict(self) -> dict:
        return {} if self.batches is not None else self.dm.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.batches is None:
            self.dm.load_state_dict(state)


class Clock(Hook):
    """A trainer hook: a timestamp before every step."""

    def __init__(self, clock: StepClock):
        self.clock = clock

    def before_step(self, trainer: Any, step: int) -> None:
        self.clock.tick()


def data_module(cfg):
    from framework.config import plugin_config
    from framework.data.module import DataModule
    from framework.registry import DATASETS

    return DataModule(plugin_config(cfg.data, DATASETS), cfg.paths.data_root, cfg.trainer.seed, 0, 1)


def medley_run(cfg, data: Any, run_dir: Path | None, clock: StepClock | None = None) -> Any:
    """``framework.run.train`` without its start-up checks: a trainer over ``data``."""
    from framework.config import plugin_config
    from framework.registry import ALGORITHMS
    from framework.run import build_strategy
    from framework.trainer import Trainer

    strategy = build_strategy(cfg)
    algorithm = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
    hooks = [Clock(clock)] if clock is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, strategy, algorithm, data, run_dir, hooks)
    trainer.fit()
    return trainer


def hand_loop(cfg, info: Any, batches, steps: int, clock: StepClock | None = None,
              wrap=lambda model: model) -> torch.nn.Module:
    """What a user writes by hand: the same model, optimizer, schedule and loss, nothing else
    (``wrap``: e.g. ``DistributedDataParallel`` for the raw-DDP arm)."""
    from framework.losses import task_losses
    from framework.models import build_multitask
    from framework.optim import build_optimizer, build_scheduler

    torch.manual_seed(cfg.trainer.seed)
    model = wrap(build_multitask(cfg.model, info))
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim)
    sched = build_scheduler(opt, cfg.optim, steps)
    model.train()
    it = iter(batches)
    for step in range(steps):
        if clock is not None:
            clock.tick()
        batch = next(it)
        out = model(batch["image"])
        loss = sum(task_losses(out, batch["labels"]).values())
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % cfg.trainer.log_every == 0:
            loss.item()
    if clock is not None:
        clock.tick()
    return model


def webdataset_batches(root: Path, manifest: dict, batch_size: int, num_workers: int, seed: int):
    """The training split through plain ``webdataset``: shuffled shards and samples, float images."""
    import numpy as np
    import webdataset as wds

    files = [str(root / s["file"]) for s in manifest["splits"]["train"]["shards"]]
    tasks = list(manifest["tasks"])

    def to_batch(samples):
        images = np.stack([s["image.npy"] for s in samples])
        if images.ndim == 3:
            images = images[:, None]
        return {"image": torch.from_numpy(images).float().div_(255.0),
                "labels": {t: torch.tensor([s["json"]["labels"].get(t, -1) for s in samples]) for t in tasks}}

    ds = (wds.WebDataset(files, shardshuffle=len(files), seed=seed, empty_check=False)
          .shuffle(1000, seed=seed).decode().batched(batch_size, collation_fn=to_batch, partial=False).repeat())
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps dropped from each arm's step times")
    p.add_argument("--rounds", type=int, default=4, help="measured rounds (one more is a warm-up)")
    p.add_argument("--tiny", action="store_true", help="widths [4], batch 8: absolute per-step overhead")
    p.add_argument("--quick", action="store_true", help="20 steps, 2 rounds (a smoke run)")
    p.add_argument("--no-shards", action="store_true", help="only the in-memory arms")
    p.add_argument("overrides", nargs="*", help="config overrides (default: experiment=demo)")
    ns = p.parse_args(argv)
    if ns.quick:
        ns.steps, ns.rounds, ns.warmup = 20, 2, 5
    overrides = ["experiment=demo", f"trainer.max_steps={ns.steps}", "trainer.eval_every=0", "trainer.ckpt_every=0",
                 *(["model.widths=[4]", "data.batch_size=8"] if ns.tiny else []), *ns.overrides]
    cfg = compose(*overrides)
    torch.manual_seed(0)
    dm = data_module(cfg)
    stream = dm.epoch_batches()
    memory = [next(stream) for _ in range(min(ns.steps, 50))]
    tmp = Path(tempfile.mkdtemp(prefix="medley-overhead-"))
    counter = itertools.count()

    def medley(batches):
        def arm() -> float:
            clock = StepClock()
            data = MemoryData(data_module(cfg) if batches is None else dm, batches)
            medley_run(cfg, data, tmp / f"run{next(counter)}", clock)
            return clock.per_step(ns.warmup)
        return arm

    def hand(shards: bool):
        def arm() -> float:
            clock = StepClock()
            if shards:
                batches = webdataset_batches(dm.root, dm.manifest, cfg.data.batch_size, cfg.data.num_workers,
                                             cfg.trainer.seed)
            else:
                batches = itertools.cycle(memory)
            hand_loop(cfg, dm.info, batches, ns.steps, clock)
            return clock.per_step(ns.warmup)
        return arm

    arms = {"medley/memory": medley(memory), "hand/memory": hand(False)}
    if not ns.no_shards:
        arms.update({"medley/shards": medley(None), "hand/shards": hand(True)})
    times = interleaved(arms, ns.rounds)
    if not ns.no_shards:  # the data path alone: batches from the shards, no model
        def loader(make):
            def arm() -> float:
                it = make()
                next(it)  # start-up excluded
                t0 = time.perf_counter()
                for _ in range(ns.steps):
                    next(it)
                return (time.perf_counter() - t0) / ns.steps
            return arm
        times.update(interleaved({
            "medley/loader": loader(lambda: data_module(cfg).epoch_batches()),
            "webdataset/loader": loader(lambda: webdataset_batches(dm.root, dm.manifest, cfg.data.batch_size,
                                                                   cfg.data.num_workers, cfg.trainer.seed))},
            ns.rounds))
    def row(label: str, a: str, b: str) -> list:
        per_round = [x / y for x, y in zip(times[a], times[b])]
        return [label, median(times[a]) * 1e3, median(times[b]) * 1e3, ratio(times, a, b),
                median([x - y for x, y in zip(times[a], times[b])]) * 1e3,
                f"{min(per_round):.3f}–{max(per_round):.3f}"]

    rows = [row("memory", "medley/memory", "hand/memory")]
    if not ns.no_shards:
        rows += [row("shards", "medley/shards", "hand/shards"),
                 row("shards, loader only", "medley/loader", "webdataset/loader")]
    headers = ["data", "medley ms/step", "hand ms/step", "ratio", "overhead ms/step", "per-round ratios"]
    model = "tiny (widths [4], batch 8)" if ns.tiny else f"demo (widths {list(cfg.model.widths)}, batch {cfg.data.batch_size})"
    result = {"model": model, "steps": ns.steps, "warmup": ns.warmup, "rounds": ns.rounds,
              "headers": headers, "rows": rows, "times": times}
    print(f"{model}: {ns.steps} steps per arm, {ns.rounds} rounds (+1 warm-up), median step time after {ns.warmup}")
    print(table(headers, rows))
    save("overhead_tiny" if ns.tiny else "overhead", result)
    return result


if __name__ == "__main__":
    main()
