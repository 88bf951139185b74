"""Distributed overhead: 2-process DDP through Medley (``strategy=ddp``) against a hand-written
``DistributedDataParallel`` loop, same model, seed, optimizer, schedule and per-rank batches.

    OMP_NUM_THREADS=1 python benchmarks/ddp_overhead.py [--steps 40] [--rounds 3] [--world 2]

Both arms run in the same processes over the same gloo group, in turn (order alternating per
round, the first round dropped); each arm's time is the median step time after ``--warmup``
steps, and ``ratio`` is the median over rounds of rank 0's per-round ratio.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import StepClock, compose, interleaved, median, ratio, save, spawn_ranks, table  # noqa: E402


def raw_ddp_loop(cfg, info, batches, steps: int, clock: StepClock) -> None:
    """The hand-written loop of ``benchmarks/overhead.py`` with the model in ``DistributedDataParallel``."""
    from torch.nn.parallel import DistributedDataParallel

    from benchmarks.overhead import hand_loop

    hand_loop(cfg, info, batches, steps, clock, wrap=DistributedDataParallel)


def worker(rank: int, world: int, port: int, ns: argparse.Namespace, queue) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    try:
        from benchmarks.overhead import Clock, MemoryData
        from framework.config import plugin_config
        from framework.data.module import DataModule
        from framework.registry import ALGORITHMS, DATASETS
        from framework.run import build_strategy
        from framework.trainer import Trainer

        cfg = compose("experiment=demo", "strategy=ddp", f"trainer.max_steps={ns.steps}", "trainer.eval_every=0",
                      "trainer.ckpt_every=0", "logger.tensorboard=false", *ns.overrides)
        strategy = build_strategy(cfg)
        dm = DataModule(plugin_config(cfg.data, DATASETS), cfg.paths.data_root, cfg.trainer.seed, rank, world)
        stream = dm.epoch_batches()
        memory = [next(stream) for _ in range(min(ns.steps, 30))]
        data = MemoryData(dm, memory)

        def medley() -> float:
            clock = StepClock()
            alg = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
            Trainer(cfg, strategy, alg, data, None, [Clock(clock)]).fit()
            return clock.per_step(ns.warmup)

        def raw() -> float:
            clock = StepClock()
            raw_ddp_loop(cfg, dm.info, itertools.cycle(memory), ns.steps, clock)
            return clock.per_step(ns.warmup)

        times = interleaved({"medley": medley, "raw": raw}, ns.rounds)
        queue.put((rank, "ok", times))
        strategy.teardown()
    except BaseException:  # noqa: BLE001 - report to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        queue.close()
        queue.join_thread()  # the result reaches the parent before a forced exit
        from framework.strategies.process_group import exit_process

        exit_process(0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    ns = p.parse_args(argv)
    results = dict(enumerate(spawn_ranks(worker, ns.world, (ns,))))
    times = results[0]
    headers = ["ranks", "medley ms/step", "raw DDP ms/step", "ratio", "rank 1 ratio"]
    rows = [[ns.world, median(times["medley"]) * 1e3, median(times["raw"]) * 1e3, ratio(times, "medley", "raw"),
             ratio(results[1], "medley", "raw") if ns.world > 1 else ""]]
    print(f"DDP over gloo, {ns.world} processes, demo model, {ns.steps} steps per arm, {ns.rounds} rounds (+1 warm-up)")
    print(table(headers, rows))
    result = {"steps": ns.steps, "rounds": ns.rounds, "world": ns.world, "headers": headers, "rows": rows,
              "times": {str(k): v for k, v in results.items()}}
    save("ddp_overhead", result)
    return result


if __name__ == "__main__":
    main()
