"""The main-process side of one shard stream: its position, its plan per epoch, lost samples.

Two modes:

* ``batches`` (a single training split): every rank delivers the same number of batches per
  epoch, ``min`` over ranks of the full batches its workers can make, computed from the
  manifest alone (no collective, so no DDP hang on uneven shards). Each logical worker gets a
  batch quota, so *which* samples an epoch holds does not depend on how the DataLoader
  interleaves its workers. The dropped tail (samples past the quota) is logged.
* ``rows`` (one source of a mixture): every row of every epoch is delivered, the last batch of
  a worker may be short; the consumer takes rows first-in first-out and reports back how many
  it used, so rows buffered but not yet used are not counted as consumed.

Position = ``epoch``, per logical worker ``consumed`` (raw samples read, decode failures
included) and ``delivered`` (rows handed out), plus ``steps``/``fill`` in batch mode. On resume
the physical DataLoader workers are rotated so that the worker which was next is served first:
the continued batch sequence equals the uninterrupted one, not only its multiset.

``on_error=skip`` can leave a rank short of its step count; it then repeats the readable
samples of this epoch (in the main process) until the count is reached, and says so once.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

from framework.data.loader import (
    ShardStream,
    StreamSpec,
    WorkerPlan,
    batch_quotas,
    batches_per_rank,
    cycle_order,
    finalize,
    make_loader,
    worker_rows,
)

log = logging.getLogger(__name__)


class SkipStats:
    """Samples and shards lost to ``on_error=skip`` on this rank; warns once per shard."""

    def __init__(self) -> None:
        self.samples = 0
        self.shards: dict[str, int] = {}

    def add(self, errors: list) -> None:
        for file, lost, detail in errors:
            first = file not in self.shards
            self.samples += int(lost)
            self.shards[file] = self.shards.get(file, 0) + int(lost)
            if first:
                msg = f"data.on_error=skip: shard {file}: {detail}; skipping {lost} sample(s)"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                log.warning(msg)

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "shards": len(self.shards), "per_shard": dict(self.shards)}


def stop_workers(loader: Any) -> None:
    """Stop a DataLoader iterator's worker processes now.

    An abandoned iterator is normally shut down when its last reference goes. When it sits in
    a reference cycle instead (e.g. kept by the traceback of an interrupted run), the garbage
    collector may close its queues before its own shutdown runs; every worker then waits out
    a 5 s timeout (40 s for 4 sources x 2 workers). The workers hold no state: terminate them.
    """
    workers = getattr(loader, "_workers", None)
    if not workers:
        return
    from torch.utils.data._utils import signal_handling

    if getattr(loader, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(loader))  # their exit is expected, not a crash
        loader._worker_pids_set = False
    for w in workers:
        if w.is_alive():
            w.terminate()
    for w in workers:
        w.join(timeout=2)
    loader._shutdown_workers()


def _strip(item: dict) -> dict:
    return {k: v for k, v in item.items() if not k.startswith("_")}


class SourceCursor:
    def __init__(self, spec: StreamSpec, mode: str, stats: SkipStats, loader_seed: int):
        if mode not in ("batches", "rows"):
            raise ValueError(f"cursor mode '{mode}'")
        self.spec, self.mode, self.stats, self.loader_seed = spec, mode, stats, loader_seed
        self.stream = ShardStream(spec)
        self.epoch = 0
        self._reset()
        self._logged_epochs: set[int] = set()

    def _reset(self) -> None:
        w = self.spec.workers
        self.consumed, self.delivered, self.steps, self.fill = [0] * w, [0] * w, 0, 0

    # ------------------------------------------------------------------ equal steps per rank
    def steps_in_epoch(self, epoch: int) -> int:
        spec = self.spec
        per_rank = batches_per_rank(spec, epoch)
        steps = min(per_rank)
        if steps == 0:
            raise ValueError(
                f"data.batch_size={spec.batch_size} leaves no full batch per rank in split '{spec.name}' "
                f"({sum(s['count'] for s in spec.shards)} samples, {spec.world} ranks, {spec.workers} workers)"
            )
        if epoch not in self._logged_epochs:
            self._logged_epochs.add(epoch)
            total = sum(s["count"] for s in spec.shards)
            dropped = total - steps * spec.batch_size * spec.world
            (log.info if spec.rank == 0 else log.debug)(
                "split %s epoch %d: %d batches per rank (min over ranks of %s full batches); "
                "%d of %d samples dropped this epoch",
                spec.name,
                epoch,
                steps,
                per_rank,
                dropped,
                total,
            )
        return steps

    # ------------------------------------------------------------------------ the stream
    def _rotation(self, batches_per_worker: list[int], done: list[int], partial: int | None) -> int:
        if partial is not None:
            return partial
        seq = cycle_order(batches_per_worker)
        k = sum(done)
        if k >= len(seq) or any(seq[:k].count(w) != d for w, d in enumerate(done)):
            return 0
        return seq[k]

    def _plan(self) -> WorkerPlan:
        spec, bs, w = self.spec, self.spec.batch_size, self.spec.workers
        done = [math.ceil(d / bs) for d in self.delivered]
        if self.mode == "batches":
            quotas = batch_quotas(spec, self.epoch, self.steps_in_epoch(self.epoch))
            rows: list[int | None] = [q * bs - d for q, d in zip(quotas, self.delivered)]
            rotation = self._rotation(quotas, done, None)
        else:
            total = worker_rows(spec, self.epoch, spec.rank) if spec.order == "local" else [0] * w
            rows = [None] * w
            partial = next(
                (i for i in range(w) if self.delivered[i] % bs and self.delivered[i] < total[i]), None
            )
            rotation = self._rotation([math.ceil(t / bs) for t in total], done, partial)
        return WorkerPlan(
            self.epoch,
            list(self.consumed),
            rows,
            list(self.delivered),
            rotation,
            full_batches=self.mode == "batches",
        )

    def batches(self) -> Iterator[dict]:
        """Infinite: the batches from the recorded position on, epoch after epoch."""
        while True:
            n = self.steps_in_epoch(self.epoch) if self.mode == "batches" else None
            if n is None or (self.fill == 0 and self.steps < n):
                self.stream.plan = self._plan()
                seed = self.loader_seed + 7919 * self.epoch
                loader = iter(make_loader(self.stream, self.spec.num_workers, seed))
                try:
                    for item in loader:
                        self.stats.add(item.get("_errors", ()))
                        if "_report" in item:
                            continue
                        w = item["_worker"]
                        self.consumed[w] = item["_pos"][-1] + 1
                        self.delivered[w] += len(item["_pos"])
                        self.steps += 1
                        yield finalize(_strip(item)) if self.mode == "batches" else item
                        if n is not None and self.steps >= n:
                            break
                finally:
                    stop_workers(loader)
            if n is not None and self.steps + self.fill < n:
                yield from self._fill(n)
            self.epoch += 1
            self._reset()

    def _fill(self, n: int) -> Iterator[dict]:
        """Repeat this epoch's readable samples until the rank has delivered ``n`` batches."""
        short = n - self.steps
        if self.fill == 0:
            log.warning(
                "rank %d, split %s, epoch %d: %d of %d batches missing after skipping bad shards; "
                "repeating readable samples of this epoch so that every rank runs %d steps",
                self.spec.rank,
                self.spec.name,
                self.epoch,
                short,
                n,
                n,
            )
        produced = 0
        workers = self.spec.workers
        for _ in itertools.count():
            got = 0
            plan = WorkerPlan(self.epoch, [0] * workers, [None] * workers, [0] * workers, full_batches=True)
            for w in range(workers):
                for item in self.stream.worker_batches(w, plan):
                    if "_report" in item:
                        continue
                    got += 1
                    produced += 1
                    if produced <= self.fill:
                        continue
                    self.fill += 1
                    yield finalize(_strip(item))
                    if self.steps + self.fill >= n:
                        return
            if got == 0:
                raise RuntimeError(
                    f"rank {self.spec.rank}: no readable sample left in split '{self.spec.name}' "
                    f"(skipped: {self.stats.as_dict()})"
                )

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": list(self.consumed),
            "delivered": list(self.delivered),
            "steps": self.steps,
            "fill": self.fill,
            "workers": self.spec.workers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["workers"]) != self.spec.workers:
            raise ValueError(
                f"the data position of split '{self.spec.name}' was saved with {state['workers']} loader "
                f"workers per rank, this run has {self.spec.workers} (data.num_workers); samples are dealt "
                "to workers, so resume with the same data.num_workers"
            )
        self.epoch = int(state["epoch"])
        self.consumed = [int(x) for x in state["consumed"]]
        self.delivered = [int(x) for x in state["delivered"]]
        self.steps, self.fill = int(state["steps"]), int(state["fill"])
