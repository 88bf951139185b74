"""What every multi-process strategy shares: topology and collectives over ``torch.distributed``.

The process group is started by the concrete strategy (Accelerate for DDP, DeepSpeed for ZeRO)
or was already started by the launcher (Ray Train); either way the collectives below are plain
``torch.distributed`` calls with a bounded timeout, so a rank that stops answering fails the run
instead of hanging it.

Exit: ``destroy_process_group`` does not stop gloo's native threads (``pt_gloo_runloop``,
``gloo_tcp_loop``) nor rank 0's TCPStore server while a DDP reducer or a DeepSpeed engine
still holds the group, and those do not reliably let go. Left to interpreter finalization, the
threads meet a half-destroyed interpreter and a peer that has already closed its sockets, and a
rank dies with ``terminate called without an active exception`` (SIGABRT) after the run has
finished. So ``teardown`` waits until every rank has destroyed its groups (rank 0 may host the
store) and ``exit_process`` ends a process that still runs such threads with ``os._exit``.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import socket
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from framework.strategies.base import Strategy

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM"}
#: native threads of torch.distributed's CPU backend and store (Linux thread names)
BACKEND_THREADS = ("gloo", "pt_gloo", "pt_tcpstore")
#: seconds a rank waits in teardown for the others to finish theirs
TEARDOWN_WAIT_S = 60.0

log = logging.getLogger("medley")


class ProcessGroupStrategy(Strategy):
    """Base of ``ddp`` and ``deepspeed``: one process per device, a global process group."""

    #: True when this strategy started the process group (and so may destroy it)
    owns_process_group = False

    def _backend(self) -> str:
        backend = getattr(self.config, "backend", "auto")
        if backend == "auto":
            return "nccl" if torch.cuda.is_available() else "gloo"
        return backend

    def _timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=getattr(self.config, "timeout_s", 1800))

    def _pick_device(self, local_rank: int) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")

    # --- topology --------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else 1

    # --- collectives ----------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        # gloo reduces CPU tensors, nccl device tensors: move there and back
        work = tensor.to(self.device) if self._backend() == "nccl" else tensor
        dist.all_reduce(work, op=getattr(dist.ReduceOp, _OPS[op]))
        if op == "mean":
            work = work / self.world_size
        if work is not tensor:
            tensor.copy_(work)
            return tensor
        return work

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def teardown(self) -> None:
        """Release the wrappers, destroy the process group if this strategy started it (Ray's, for
        one, is not ours), then wait until every rank has done the same: rank 0 may host the
        store, and a rank that leaves early closes sockets its peers still use. While an
        exception propagates there is no wait (a failed peer would never arrive)."""
        if not dist.is_initialized():
            return
        store, rank, world = self._teardown_store(), self.rank, self.world_size
        failing = sys.exc_info()[0] is not None  # called from a `finally`: a peer may never arrive
        self._release_wrappers()
        gc.collect()  # the wrappers hold the group through reference cycles
        if self.owns_process_group:
            dist.destroy_process_group()
        if store is not None and world > 1 and not failing:
            _wait_for_all(store, rank, world, min(self._timeout().total_seconds(), TEARDOWN_WAIT_S))

    def _release_wrappers(self) -> None:
        """Drop what this strategy holds on the process group (subclasses: engine, accelerator)."""

    def _teardown_store(self) -> Any:
        try:
            return dist.distributed_c10d._get_default_store()
        except (RuntimeError, ValueError, AttributeError):  # a group started without a store
            return None


def _wait_for_all(store: Any, rank: int, world: int, timeout_s: float) -> None:
    """Two counters in the store. Every rank announces it has torn down and waits for all; then
    the others announce their last store call and rank 0, which may host the store, waits for
    those before it leaves. A rank that never arrives (it failed elsewhere) costs ``timeout_s``."""
    deadline = time.monotonic() + timeout_s

    def wait(key: str, target: int, add: int) -> bool:
        count = store.add(key, add)
        while count < target and time.monotonic() < deadline:
            time.sleep(0.05)
            count = store.add(key, 0)
        return count >= target

    try:
        arrived = wait("medley/teardown", world, 1)
        if rank != 0:
            store.add("medley/left", 1)  # this rank's last use of the store
        elif arrived:
            wait("medley/left", world - 1, 0)
    except RuntimeError as exc:  # the store is gone: nobody is left to wait for
        log.debug("teardown: store unreachable (%s)", exc)
        return
    if not arrived:
        log.warning("teardown: not every one of %d ranks finished within %.0f s", world, timeout_s)


def backend_threads() -> list[str]:
    """Names of this process's live native communication threads (empty where /proc is missing)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    names = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name.startswith(BACKEND_THREADS):
            names.append(name)
    return sorted(names)


def exit_process(code: int | str | None = 0) -> None:
    """Leave the process with ``code`` (``sys.exit`` semantics). While communication threads
    are still alive, skip interpreter finalization (``os._exit`` after flushing), which is where
    they abort the process; otherwise exit normally."""
    if not backend_threads():
        if code:
            sys.exit(code)
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def ensure_rendezvous_env() -> None:
    """A plain ``python`` run of a distributed strategy becomes a world of one.

    torchrun, accelerate, deepspeed and Ray set these variables; without them DeepSpeed falls
    back to MPI discovery and Accelerate to no process group at all.
    """
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


def start_group_for_this_attempt(backend: str, timeout: datetime.timedelta) -> None:
    """Under a restarting torchelastic launcher (``torchrun --max-restarts``, ``accelerate launch
    --max_restarts``) start the group on the agent's store behind a per-attempt prefix.

    torchrun's static rendezvous keeps one agent store across restarts, and ``env://`` adds no
    attempt prefix, so a restarted rank can read the address its killed predecessor published and
    fail with "Connection refused" (measured: the restart test failed that way under load).
    Anywhere else, or with a group already started, this does nothing and Accelerate/DeepSpeed
    start the group as usual.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if dist.is_initialized() or attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"medley/attempt_{attempt}", store), rank=rank,
                            world_size=world, timeout=timeout)
