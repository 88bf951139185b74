"""Shared helpers of the cost benchmarks: interleaved A/B timing, the machine, tables, runs.

Machines here are shared and noisy, so every cost is a ratio measured in one process: arms run
in turn (order alternating per round), the first round is a warm-up and is dropped, and the
median over rounds is reported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    """What the numbers were measured on (a line of every results table)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def interleaved(arms: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every arm once per round, alternating the order; each arm returns its measurement.
    The first ``warmup`` rounds are dropped."""
    names = list(arms)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + warmup):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            value = arms[name]()
            if r >= warmup:
                out[name].append(value)
    return out


def ratio(values: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of the per-round ratio a / b (rounds pair up, so drift cancels)."""
    return statistics.median(x / y for x, y in zip(values[a], values[b]))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


class StepClock:
    """Timestamps at the start of every step; the median step time after a warm-up."""

    def __init__(self) -> None:
        self.t: list[float] = []

    def tick(self) -> None:
        self.t.append(time.perf_counter())

    def per_step(self, warmup: int) -> float:
        gaps = [b - a for a, b in zip(self.t[warmup:], self.t[warmup + 1:])]
        return statistics.median(gaps)

    def mean_step(self, warmup: int) -> float:
        span = self.t[warmup:]
        return (span[-1] - span[0]) / (len(span) - 1)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 4 significant digits."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """``benchmarks/results/<name>.json`` (what ``run_all`` turns into RESULTS.md)."""
    out_dir = out_dir or REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=1))
    return path


def compose(*overrides: str):
    """A validated config as ``medley train`` composes it (no progress bar)."""
    from framework.compose import compose as compose_config

    return compose_config(["logger.progress=off", *overrides])


def spawn_ranks(worker: Callable, world: int, args: tuple, timeout: float = 1800) -> list[Any]:
    """Run ``worker(rank, world, port, *args, queue)`` on ``world`` spawned processes; each puts
    ``(rank, "ok"|"error", value)`` on the queue. Returns the values in rank order."""
    import multiprocessing as mp
    import socket

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=worker, args=(r, world, port, *args, queue)) for r in range(world)]
    for proc in procs:
        proc.start()
    out: dict[int, Any] = {}
    try:
        for _ in range(world):
            rank, status, value = queue.get(timeout=timeout)
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            out[rank] = value
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return [out[r] for r in range(world)]
