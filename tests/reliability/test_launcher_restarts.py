"""A rank killed under a launcher that restarts the group (``torchrun --max-restarts 2``,
``accelerate launch --max_restarts 2``): the group restarts, ``resume=auto`` continues from the
last committed checkpoint, and the run ends at the planned step with the weights of an
uninterrupted run (CPU, fp32, GroupNorm: equal, not merely close)."""

from __future__ import annotations

import json

import pytest

from framework.checkpoint import load_file
from tests.helpers import dist_launch as L
from tests.helpers import reliability as R
from tests.helpers.distributed import free_port
from tests.reliability.conftest import reference_overrides

pytestmark = [pytest.mark.reliability, pytest.mark.distributed, pytest.mark.timeout(R.TIMEOUT_S)]
CHECKS = ("group restarted", "resumed from the last committed checkpoint", "ends at the planned step",
          "parameters torch.equal to an uninterrupted run")
LAUNCHERS = ["torchrun", "accelerate"]
KILLS = [(1, 5), (0, 3)] if R.FULL else [(1, 5)]


def _command(launcher: str, overrides: list[str]) -> list[str]:
    if launcher == "torchrun":
        return L.torchrun(2, "--max-restarts", "2", "--monitor-interval", "0.5", "-m", "launchers.train", *overrides)
    return L.accelerate("cpu_2proc.yaml", "--main_process_port", str(free_port()), "--max_restarts", "2",
                        "--monitor_interval", "0.5", "-m", "launchers.train", *overrides)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_killed_rank_restarts_the_group_which_resumes_and_matches_the_uninterrupted_run(
        launcher, ddp_reference, data_root, tmp_path):
    failed = []
    for n, (victim, step) in enumerate(KILLS):
        root, faults = tmp_path / f"runs{n}", tmp_path / f"faults{n}"
        overrides = [*reference_overrides(), f"paths.run_root={root}", "name=restart", "resume=auto"]
        env = {"MEDLEY_FAULT_DIR": str(faults), "MEDLEY_FAULT_KILL_STEP": str(step),
               "MEDLEY_FAULT_RANK": str(victim)}
        proc = L.run(_command(launcher, overrides), data_root, timeout=400, env=env)
        runs = sorted((root / "restart").iterdir()) if (root / "restart").is_dir() else []
        if proc.returncode != 0 or len(runs) != 1 or not (faults / "killed").exists():
            failed.append(f"rank {victim} after step {step}: exit {proc.returncode}, run dirs {runs}:\n"
                          f"{proc.stdout[-3000:]}")
            continue
        summary = json.loads((runs[0] / "summary.json").read_text())
        committed = (step // 2) * 2
        equal, worst = R.compare_params(load_file(runs[0] / "checkpoints" / "step-00000008.pt")["model"],
                                        ddp_reference["model"])
        if (summary["steps"], summary["resumed_from"]) != (8, committed) or not equal:
            failed.append(f"rank {victim} after step {step}: steps {summary['steps']}, resumed from "
                          f"{summary['resumed_from']} (expected {committed}), max |param diff| {worst:.3g}")
    R.record("rank killed under a restarting launcher", f"{launcher} --max-restarts 2",
             "SIGKILL of one rank after a step", len(KILLS), len(KILLS) - len(failed), CHECKS)
    assert not failed, "\n".join(failed)
