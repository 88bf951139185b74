"""Run the real launchers (``accelerate launch``, ``torchrun``, ``deepspeed``) from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.helpers.distributed import free_port

BIN = Path(sys.executable).parent

#: a few steps of a tiny model: these tests prove the launch, not the numerics
SMALL = ["data.limit=256", "data.batch_size=16", "data.eval_batch_size=128", "model.widths=[8]",
         "model.norm=group", "trainer.max_steps=6", "trainer.ckpt_every=3", "trainer.log_every=1",
         "logger.progress=lines", "logger.tensorboard=false"]


def launch_env(data_root: Path) -> dict[str, str]:
    env = {**os.environ, "MEDLEY_DATA": str(data_root), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU, also where a GPU exists
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # the launcher under test sets these
    return env


def start(cmd: list[str], data_root: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = launch_env(data_root)
    for key, value in (env or {}).items():
        full_env[key] = value.replace("{PYTHONPATH}", full_env["PYTHONPATH"])
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run(cmd: list[str], data_root: Path, timeout: float = 240,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = start(cmd, data_root, env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(cmd[:4])} ... timed out after {timeout} s:\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


#: loaded by every Python process through PYTHONPATH: delays one rank's strategy teardown
_SLOW_TEARDOWN = """
import os
if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("MEDLEY_TEST_SLOW_RANK"):
    import time
    from framework.strategies.process_group import ProcessGroupStrategy

    _teardown = ProcessGroupStrategy.teardown

    def teardown(self):
        time.sleep(float(os.environ["MEDLEY_TEST_SLOW_S"]))
        _teardown(self)

    ProcessGroupStrategy.teardown = teardown
"""


def slow_teardown(tmp: Path, rank: int, seconds: float) -> dict[str, str]:
    """Environment for ``run``/``start`` in which rank ``rank`` reaches teardown ``seconds`` late,
    so the other ranks finish first: the exit order is forced, not left to chance."""
    site = tmp / "slow_teardown_site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SLOW_TEARDOWN)
    return {"PYTHONPATH": f"{site}{os.pathsep}{{PYTHONPATH}}", "MEDLEY_TEST_SLOW_RANK": str(rank),
            "MEDLEY_TEST_SLOW_S": str(seconds)}


def accelerate(config: str, *args: str) -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "launchers" / "accelerate" / config),
            *args]


def torchrun(nproc: int, *args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def deepspeed(nproc: int, *args: str) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def logged_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["step"] for x in lines if "train/loss" in json.loads(x)]
