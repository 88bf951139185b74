"""SIGTERM (a preemption notice) mid-step, in one process and in 2-process DDP: the step finishes,
every rank takes part in a checkpoint of that step, the processes exit with
``PREEMPTED_EXIT_CODE`` within 30 s, and ``resume=auto`` continues with no optimizer step lost
(the checkpoint's step is the last step any rank ran; the rerun resumes from it and ends at the
planned step)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from framework.checkpoint import latest, load_file
from framework.preemption import PREEMPTED_EXIT_CODE
from tests.helpers import reliability as R

pytestmark = [pytest.mark.reliability, pytest.mark.distributed, pytest.mark.timeout(R.TIMEOUT_S)]

STEPS = 30
CHECKS = (f"every rank exits {PREEMPTED_EXIT_CODE} within 30 s", "checkpoint step = last step run on every rank",
          "resume=auto resumes there and ends at the planned step")
#: (world size, ranks signalled, step after which the signal is sent)
CASES = {"single": [(1, (0,), 3)], "ddp": [(2, (1,), 3)]}
if R.FULL:
    CASES = {"single": [(1, (0,), s) for s in (1, 3, 7, 12)],
             "ddp": [(2, ranks, s) for ranks in ((0,), (1,), (0, 1)) for s in (1, 3, 12)]}


def _steps(fault_dir, rank: int) -> list[int]:
    path = fault_dir / f"steps{rank}.txt"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _one(world: int, signalled: tuple, after: int, data_root, tmp) -> list[str]:
    run_dir, fault_dir = tmp / "run", tmp / "faults"
    fault_dir.mkdir(parents=True)
    overrides = [*R.TINY, f"trainer.max_steps={STEPS}", "resume=auto", f"paths.run_dir={run_dir}",
                 f"trainer.callbacks=[\"{R.FAULTS}\"]", f"strategy={'ddp' if world > 1 else 'single'}"]
    ranks = R.Ranks(world, overrides, data_root, {"MEDLEY_FAULT_DIR": str(fault_dir), "MEDLEY_FAULT_SLEEP": "0.2"})
    deadline = time.time() + 120
    while len(_steps(fault_dir, 0)) < after and time.time() < deadline and ranks.procs[0].poll() is None:
        time.sleep(0.02)
    for rank in signalled:
        ranks.procs[rank].send_signal(signal.SIGTERM)
    sent = time.time()
    codes = ranks.wait(timeout=60, stop_on_kill=False)
    took = time.time() - sent
    problems = []
    _one.took.append(took)
    if codes != [PREEMPTED_EXIT_CODE] * world or took > 30:
        return [f"exit codes {codes} after {took:.1f} s:\n{ranks.output()[-3000:]}"]
    ckpt = latest(run_dir / "checkpoints")
    step = load_file(ckpt)["step"] if ckpt else None
    last = [(_steps(fault_dir, r) or [None])[-1] for r in range(world)]
    if any(s != step for s in last):
        problems.append(f"checkpoint at step {step}, ranks last ran steps {last}")
    codes, out = R.run_ranks(world, overrides, data_root, tmp / "rerun")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    if codes != [0] * world or summary.get("resumed_from") != step or summary.get("steps") != STEPS:
        problems.append(f"rerun: exit {codes}, resumed_from {summary.get('resumed_from')}, "
                        f"steps {summary.get('steps')}:\n{out[-2000:]}")
    return problems


_one.took = []


@pytest.mark.parametrize("case", sorted(CASES))
def test_sigterm_finishes_the_step_checkpoints_and_exits_with_the_preemption_code(case, data_root, tmp_path):
    failed, times = [], 0
    _one.took.clear()
    for n, (world, signalled, after) in enumerate(CASES[case]):
        times += 1
        problems = _one(world, signalled, after, data_root, tmp_path / f"t{n}")
        if problems:
            failed.append(f"SIGTERM to ranks {signalled} after step {after}: {problems}")
    R.record("SIGTERM (preemption) mid-step", case,
             "SIGTERM to " + ("the process" if case == "single" else "one or both ranks") + " during a step",
             times, times - len(failed), CHECKS, f"signal to exit: at most {max(_one.took, default=0):.1f} s")
    assert not failed, "\n".join(failed)
