"""A real 2-process gloo harness for tests (no mocks).

``run_workers(fn, world_size=2, args=...)`` spawns ``world_size`` processes, each with its
own rank, a free port per call and a short collective timeout so that a desync fails in
seconds instead of gloo's 30-minute default. ``fn(rank, world_size, *args)`` must be a
module-level function; its return value (picklable) comes back as ``results[rank]``.
"""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from typing import Any, Callable

from benchmarks._common import spawn_ranks

COLLECTIVE_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "OMP_NUM_THREADS": "1",
    }


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, init_pg: bool, queue: Any) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(dist_env(rank, world_size, port))
    torch.set_num_threads(1)
    try:
        if init_pg:
            dist.init_process_group(
                "gloo", rank=rank, world_size=world_size,
                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
            )
        queue.put((rank, "ok", fn(rank, world_size, *args)))
    except BaseException:  # noqa: BLE001 - report any failure to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if init_pg and dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn: Callable, world_size: int = 2, args: tuple = (), timeout: float = 120,
                init_process_group: bool = True) -> list[Any]:
    """Run ``fn`` on ``world_size`` real processes; raise with the worker's traceback on failure."""
    return spawn_ranks(_worker, world_size, (fn, args, init_process_group), timeout=timeout)
