"""Ray Train: ``ray job submit`` against a private cluster, a worker death resumed from the last
committed checkpoint, and ``python -m launchers.ray_job`` starting its own local Ray.

One cluster serves the whole session (starting Ray and its workers is the slow part); the
fixture that starts it is the only thing that stops it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.helpers.ray_cluster import BIN, OBJECT_STORE_BYTES, ray_env, start_cluster, stop_cluster

pytestmark = pytest.mark.distributed

STEPS, CKPT_EVERY, KILL_AFTER = 8, 4, 6


def job_overrides(data_root: Path, run_dir: Path) -> list[str]:
    return [f"paths.data_root={data_root}", f"paths.run_dir={run_dir}", "data.limit=256", "data.batch_size=16",
            "data.eval_batch_size=128", "model.widths=[8]", "model.norm=group", f"trainer.max_steps={STEPS}",
            f"trainer.ckpt_every={CKPT_EVERY}", "trainer.log_every=4", "logger.progress=lines",
            "logger.tensorboard=false"]


@pytest.fixture(scope="session")
def ray_cluster(data_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("ray-runs")
    cluster = start_cluster(ray_env(MEDLEY_DATA=str(data_root), MEDLEY_RUNS=str(runs)))
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return subprocess.CompletedProcess(cmd, proc.returncode, proc.stdout + proc.stderr, "")


@pytest.fixture(scope="module")
def local_run_with_a_worker_death(data_root, tmp_path_factory) -> dict:
    """``python -m launchers.ray_job`` starting its own local Ray; rank 1 dies after step 6
    (test-only hook, configured by environment variables). Runs before the session cluster starts."""
    tmp = tmp_path_factory.mktemp("local")
    temp_dir = Path(tempfile.mkdtemp(prefix="mrayl", dir="/tmp"))
    run_dir, marker = tmp / "run", tmp / "killed"
    env = ray_env(MEDLEY_DATA=str(data_root), MEDLEY_TEST_KILL_STEP=str(KILL_AFTER),
                  MEDLEY_TEST_KILL_MARKER=str(marker))
    cmd = [sys.executable, "-m", "launchers.ray_job", "--num-workers", "2", "--max-failures", "1",
           "--hook", "tests.helpers.ray_faults:KillWorkerOnce", "--num-cpus", "2",
           "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir),
           *job_overrides(data_root, run_dir)]
    proc = run(cmd, env)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(temp_dir) in " ".join(p.info["cmdline"] or [])]
    for p in leftovers:  # only processes of this run's own local Ray
        p.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)
    return {"proc": proc, "run_dir": run_dir, "marker": marker, "leftovers": leftovers}


def test_worker_death_resumes_from_the_last_committed_checkpoint(local_run_with_a_worker_death):
    """The step-4 checkpoint is the last committed one when rank 1 dies after step 6: the
    restarted worker group resumes there (2 steps lost, at most ckpt_every - 1) and trains to the end."""
    r = local_run_with_a_worker_death
    assert r["proc"].returncode == 0, r["proc"].stdout[-5000:]
    assert r["marker"].read_text().startswith(f"rank 1 killed after step {KILL_AFTER}")
    summary = json.loads((r["run_dir"] / "summary.json").read_text())
    assert summary["resumed_from"] == CKPT_EVERY
    assert KILL_AFTER - summary["resumed_from"] <= CKPT_EVERY - 1
    assert (summary["steps"], summary["world_size"]) == (STEPS, 2)
    assert "medley ray_job: data_root=/" in r["proc"].stdout


def test_a_local_ray_started_by_the_launcher_is_stopped_by_it(local_run_with_a_worker_death):
    assert not local_run_with_a_worker_death["leftovers"]


def test_submitted_job_succeeds_like_the_run_that_lost_a_worker(ray_cluster, local_run_with_a_worker_death,
                                                                data_root, tmp_path):
    """``ray job submit --working-dir . -- python -m launchers.ray_job ...`` reaches SUCCEEDED with a
    summary; with the same config it ends exactly where the interrupted run ended (same step count,
    same metrics: the resume restored data position, RNG and optimizer state)."""
    from ray.job_submission import JobSubmissionClient

    run_dir = tmp_path / "run"
    submission = f"medley-test-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", "MEDLEY_DATA": str(data_root)}}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", ".",
           "--submission-id", submission, "--runtime-env-json", json.dumps(runtime_env), "--",
           sys.executable, "-m", "launchers.ray_job", "--num-workers", "2", *job_overrides(data_root, run_dir)]
    proc = run(cmd, ray_env())
    status = JobSubmissionClient(ray_cluster.dashboard_url).get_job_status(submission)
    assert str(status) == "SUCCEEDED", proc.stdout[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("ddp", 2, STEPS)
    assert summary["resumed_from"] is None
    assert f"medley ray_job: run_dir={run_dir}" in proc.stdout
    # reported to Ray at checkpoint steps only: step 4, then the final one with the final metrics
    assert sorted(p.name for p in (run_dir / "ray").glob("step-*")) == ["step-00000004", "step-00000008"]
    interrupted = json.loads((local_run_with_a_worker_death["run_dir"] / "summary.json").read_text())
    assert summary["steps"] == interrupted["steps"]
    assert summary["final_metrics"] == interrupted["final_metrics"]
