"""The reliability suite's plumbing: how much to inject, where results go, how ranks start.

``MEDLEY_RELIABILITY=full`` runs every injection point and repetition (``make reliability``);
otherwise (CI) each case runs a small fixed subset. Every test appends what it injected, how
often, and what held to a JSON-lines file (``$MEDLEY_RELIABILITY_OUT``, default
``runs/reliability/results.jsonl``) that ``scripts/reliability_table.py`` renders.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tests.conftest import REPO
from tests.helpers.distributed import free_port

FULL = os.environ.get("MEDLEY_RELIABILITY", "").lower() == "full"
#: per-test limit: the full setting repeats each case many times
TIMEOUT_S = 14400 if FULL else 600
FAULTS = "tests.helpers.reliability_faults:Faults"

#: a tiny deterministic run: CPU, fp32, GroupNorm (no running statistics), no dropout
TINY = ["data.limit=128", "data.batch_size=16", "data.eval_batch_size=128", "model.widths=[8]",
        "model.norm=group", "trainer.log_every=1", "logger.progress=lines", "logger.tensorboard=false",
        "optim.warmup_steps=0"]


def results_path() -> Path:
    return Path(os.environ.get("MEDLEY_RELIABILITY_OUT") or REPO / "runs" / "reliability" / "results.jsonl")


def record(row: str, case: str, injected: str, times: int, held: int, checks: Sequence[str],
           detail: str = "") -> None:
    """One result line: ``times`` injections of ``injected``, of which ``held`` passed every check."""
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"row": row, "case": case, "injected": injected, "times": times, "held": held,
            "checks": list(checks), "detail": detail, "mode": "full" if FULL else "fast",
            "time": round(time.time(), 1)}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def pick(items: Sequence[Any], fast: int) -> list[Any]:
    """All of ``items`` in full mode; else ``fast`` of them spread evenly (first and last kept)."""
    items = list(items)
    if FULL or len(items) <= fast:
        return items
    if fast == 1:
        return [items[len(items) // 2]]
    step = (len(items) - 1) / (fast - 1)
    return [items[round(i * step)] for i in range(fast)]


def sha256_tree(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every visible file under ``root`` (hidden temporaries skipped)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "launchers.train", *overrides]


def base_env(data_root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "MEDLEY_DATA": str(data_root), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "MEDLEY_RELIABILITY"):
        env.pop(var, None)
    env.update(extra or {})
    return env


class Ranks:
    """``world`` processes of ``python -m launchers.train``, each with its rank in the environment
    (what torchrun sets), so a test can signal or kill one rank and read each exit status."""

    def __init__(self, world: int, overrides: Sequence[str], data_root: Path, env: dict[str, str] | None = None,
                 log_dir: Path | None = None):
        port = free_port()
        self.procs, self.logs = [], []
        for rank in range(world):
            rank_env = base_env(data_root, env)
            if world > 1:
                rank_env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                                 "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                                 "MASTER_PORT": str(port)})
            log = open((log_dir or Path((env or {})["MEDLEY_FAULT_DIR"])) / f"rank{rank}.log", "w")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(train_cmd(*overrides), cwd=REPO, env=rank_env, stdout=log,
                                               stderr=subprocess.STDOUT))

    def wait(self, timeout: float = 300, stop_on_kill: bool = True) -> list[int]:
        """Exit codes; once a rank dies by a signal the others are killed, as a launcher would."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            codes = [p.poll() for p in self.procs]
            if all(c is not None for c in codes):
                break
            if stop_on_kill and any(c is not None and c < 0 for c in codes):
                self.kill()
            time.sleep(0.05)
        else:
            self.kill()
            raise AssertionError(f"ranks still running after {timeout} s:\n{self.output()}")
        for log in self.logs:
            log.close()
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def output(self) -> str:
        return "\n".join(f"--- rank {i}\n{Path(log.name).read_text()[-3000:]}" for i, log in enumerate(self.logs))


def run_ranks(world: int, overrides: Sequence[str], data_root: Path, fault_dir: Path,
              env: dict[str, str] | None = None, timeout: float = 300) -> tuple[list[int], str]:
    fault_dir.mkdir(parents=True, exist_ok=True)
    ranks = Ranks(world, overrides, data_root, {"MEDLEY_FAULT_DIR": str(fault_dir), **(env or {})})
    codes = ranks.wait(timeout)
    return codes, ranks.output()


def strategy_overrides(strategy: str) -> list[str]:
    if strategy == "deepspeed":
        return ["strategy=deepspeed", "strategy.zero_stage=2", "trainer.grad_clip=0"]
    return [f"strategy={strategy}"]


def world_of(strategy: str) -> int:
    return 1 if strategy == "single" else 2


def params_of(checkpoint: Path) -> dict:
    from framework.checkpoint import load_file

    return load_file(checkpoint)["model"]


def read_events(fault_dir: Path, rank: int) -> list[str]:
    path = fault_dir / f"events{rank}.txt"
    return path.read_text().splitlines() if path.exists() else []


def read_batches(fault_dir: Path, rank: int) -> list[tuple[int, str]]:
    """``(step, sha256)`` of every micro-batch rank ``rank`` drew, in order."""
    path = fault_dir / f"batches{rank}.jsonl"
    if not path.exists():
        return []
    return [(r["step"], r["sha"]) for r in map(json.loads, path.read_text().splitlines())]


def compare_params(a: dict, b: dict, atol: float = 0.0) -> tuple[bool, float]:
    """(all close within ``atol`` — exactly equal for 0 —, the largest absolute difference)."""
    import torch

    if set(a) != set(b):
        return False, float("inf")
    worst = max((float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0) for k in a)
    exact = all(torch.equal(a[k], b[k]) for k in a)
    return (exact if atol == 0 else worst <= atol), worst
