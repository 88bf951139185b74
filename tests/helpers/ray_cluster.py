"""A private Ray cluster for tests: own temp dir, own ports, 127.0.0.1, capped object store.

``ray stop`` would stop every Ray on the machine; this one is stopped by killing exactly the
process tree that ``ray start --block`` (run in its own session) created.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.helpers.distributed import free_port

BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 200_000_000


def ray_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # stay on 127.0.0.1
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           # a loopback-only test cluster; with auth on, a local Ray writes a token into ~/.ray
           "RAY_AUTH_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", **extra}
    for var in ("RAY_ADDRESS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


@dataclass
class RayCluster:
    proc: subprocess.Popen
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    log: Path


def start_cluster(env: dict[str, str], timeout: float = 120) -> RayCluster:
    temp_dir = Path(tempfile.mkdtemp(prefix="mray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    gcs, dashboard = free_port(), free_port()
    ports = {"--port": gcs, "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port()}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--dashboard-host", "127.0.0.1", "--num-cpus", "2", "--object-store-memory", str(OBJECT_STORE_BYTES),
           "--include-dashboard=true", "--disable-usage-stats", "--temp-dir", str(temp_dir)]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    log = temp_dir / "ray-start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = RayCluster(proc, temp_dir, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            stop_cluster(cluster)
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{cluster.dashboard_url}/api/version", timeout=2) as r:
                if r.status == 200:
                    return cluster
        except urllib.error.HTTPError as exc:  # answering, but refusing us (e.g. token auth)
            stop_cluster(cluster)
            raise RuntimeError(f"the Ray dashboard answered {exc.code}: {exc.reason}") from None
        except OSError:
            pass
        time.sleep(1)
    stop_cluster(cluster)
    raise RuntimeError(f"the Ray dashboard did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_cluster(cluster: RayCluster, grace: float = 8) -> None:
    """SIGTERM, then SIGKILL, to the processes this cluster started (and only those)."""
    procs = _tree(cluster.proc.pid) + _in_session(cluster.proc.pid)
    for p in procs:
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive + _tree(cluster.proc.pid) + _in_session(cluster.proc.pid):
        _signal(p, signal.SIGKILL)
    cluster.proc.wait(timeout=30)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _in_session(sid: int) -> list[psutil.Process]:
    """Processes whose parent died and were re-parented still carry the session id."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
