"""Resume under 2-process DDP: after a rank is killed (SIGKILL after step 5, the last checkpoint
at step 4) and the group is rerun with ``resume=auto``, each rank draws exactly the batches the
uninterrupted run drew from step 5 on, and the final weights agree (1e-6; equality is reported)."""

from __future__ import annotations

import pytest

from framework.checkpoint import load_file
from tests.helpers import reliability as R
from tests.reliability.conftest import reference_overrides

pytestmark = [pytest.mark.reliability, pytest.mark.distributed, pytest.mark.timeout(R.TIMEOUT_S)]
CHECKS = ("per-rank batch sequence after resume = uninterrupted run", "parameters allclose 1e-6")


@pytest.mark.parametrize("victim,step", [(1, 5), (0, 7)] if R.FULL else [(1, 5)])
def test_resumed_ddp_run_draws_the_same_batches_and_ends_with_the_same_weights(victim, step, ddp_reference,
                                                                                 data_root, tmp_path):
    run_dir, faults = tmp_path / "run", tmp_path / "faults"
    overrides = [*reference_overrides(), f"paths.run_dir={run_dir}", "resume=auto"]
    codes, out = R.run_ranks(2, overrides, data_root, faults,
                             {"MEDLEY_FAULT_KILL_STEP": str(step), "MEDLEY_FAULT_RANK": str(victim)})
    assert codes[victim] == -9, out
    codes, out = R.run_ranks(2, overrides, data_root, tmp_path / "rerun", {"MEDLEY_FAULT_BATCHES": "1"})
    assert codes == [0, 0], out
    problems = []
    resumed_at = load_file(run_dir / "checkpoints" / "step-00000008.pt")["segments"][-1]["start_step"]
    for rank in range(2):
        after = R.read_batches(tmp_path / "rerun", rank)
        expected = [b for b in ddp_reference["batches"][rank] if b[0] > resumed_at]
        if not after or after != expected:
            problems.append(f"rank {rank}: batches after step {resumed_at} differ ({len(after)} vs {len(expected)})")
    close, worst = R.compare_params(load_file(run_dir / "checkpoints" / "step-00000008.pt")["model"],
                                    ddp_reference["model"], atol=1e-6)
    exact, _ = R.compare_params(load_file(run_dir / "checkpoints" / "step-00000008.pt")["model"],
                                ddp_reference["model"])
    if not close:
        problems.append(f"parameters differ by up to {worst:.3g}")
    R.record("resume under 2-process DDP", f"rank {victim} killed after step {step}",
             "SIGKILL of one rank, rerun with resume=auto", 1, 0 if problems else 1, CHECKS,
             f"max |param diff| {worst:.3g}, torch.equal {exact}")
    assert not problems, problems
