"""SIGKILL at each I/O call of a checkpoint save (inside a tensor file, between files, around the
rename that publishes it, while old checkpoints are pruned), for single, ddp and deepspeed.

A run saves at steps 2 and 4 and is killed during its third save (step 6, which also prunes
step 2). What must hold every time: the step-4 checkpoint's files keep their sha256;
``resume=auto`` picks a checkpoint that loads whole (step 4, or step 6 when it was complete);
a rerun with ``resume=auto`` writes step 6 on every rank and finishes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.checkpoint import list_checkpoints, load_file, resolve_resume
from tests.helpers import reliability as R

pytestmark = [pytest.mark.reliability, pytest.mark.distributed, pytest.mark.timeout(R.TIMEOUT_S)]

RUN = [*R.TINY, "trainer.max_steps=6", "trainer.ckpt_every=2", "trainer.keep_last=2", "resume=auto",
       f"trainer.callbacks=[\"{R.FAULTS}\"]"]
#: the CI subset: one point in a tensor file and one in pruning (single), the publishing rename
#: (ddp), and the pointer rename after the shard directory was renamed (deepspeed)
FAST = {"single": [(0, "write:60"), (0, "unlink:1")], "ddp": [(0, "replace:1")], "deepspeed": [(0, "replace:2")]}
CHECKS = ("previous checkpoint sha256 unchanged", "resume=auto picks a complete checkpoint",
          "rerun saves the same step on every rank and finishes")


def injection_points(events: list[str], writes_per_file: int) -> list[str]:
    """``any:N`` selectors: every event that is not a write, and a spread of writes in each file."""
    points, writes = [], {}
    for line in events:
        index, kind, *rest = line.split(" ", 2)
        if kind == "write":
            writes.setdefault(rest[0] if rest else "", []).append(index)
        else:
            points.append(index)
    for indices in writes.values():
        points += _spread(indices, writes_per_file)
    return [f"any:{i}" for i in sorted(set(points), key=int)]


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def _run(strategy: str, run_dir: Path, data_root: Path, fault_dir: Path, env: dict) -> tuple[list[int], str]:
    overrides = [*RUN, *R.strategy_overrides(strategy), f"paths.run_dir={run_dir}"]
    return R.run_ranks(R.world_of(strategy), overrides, data_root, fault_dir, env)


def check_after_kill(strategy: str, run_dir: Path, fault_dir: Path) -> list[str]:
    """What does not hold after a kill (empty: everything held)."""
    failures = []
    ckpts = run_dir / "checkpoints"
    before = json.loads((fault_dir / "before.json").read_text())
    after = R.sha256_tree(ckpts)
    previous = {k: v for k, v in before.items() if k.startswith("step-00000004")}
    if not previous or any(after.get(k) != v for k, v in previous.items()):
        failures.append("the step-4 checkpoint changed or vanished")
    for visible in list_checkpoints(ckpts):
        try:
            load_file(visible)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"visible checkpoint {visible.name} does not load: {exc}")
    chosen = resolve_resume("auto", run_dir)
    if chosen is None or chosen.name not in ("step-00000004.pt", "step-00000006.pt"):
        failures.append(f"resume=auto chose {chosen}")
    elif strategy == "deepspeed":
        names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
        shards = ckpts / chosen.name.replace(".pt", ".ds")
        if not shards.is_dir() or names(shards) != names(ckpts / "step-00000004.ds"):
            failures.append(f"resume=auto chose {chosen.name} with incomplete shards")
    return failures


def check_rerun(strategy: str, run_dir: Path, data_root: Path, fault_dir: Path) -> list[str]:
    codes, out = _run(strategy, run_dir, data_root, fault_dir / "rerun", {})
    if codes != [0] * R.world_of(strategy):
        return [f"rerun exit codes {codes}:\n{out[-2000:]}"]
    final = run_dir / "checkpoints" / "step-00000006.pt"
    summary = json.loads((run_dir / "summary.json").read_text())
    if load_file(final)["step"] != 6 or summary["steps"] != 6:
        return ["rerun did not end with a loadable step-6 checkpoint"]
    if strategy == "deepspeed" and not (run_dir / "checkpoints" / "step-00000006.ds").is_dir():
        return ["rerun wrote no step-6 shards"]
    return []


@pytest.mark.parametrize("strategy", ["single", "ddp", "deepspeed"])
def test_sigkill_at_every_checkpoint_io_call_leaves_a_loadable_previous_checkpoint(strategy, data_root, tmp_path):
    if R.FULL:  # a clean run lists the save's I/O calls on each rank; every one becomes a kill point
        trace = tmp_path / "trace"
        codes, out = _run(strategy, tmp_path / "trace_run", data_root, trace, {"MEDLEY_FAULT_IO_ARM": "3"})
        assert codes == [0] * R.world_of(strategy), out
        points = [(0, p) for p in injection_points(R.read_events(trace, 0), 4 if strategy == "deepspeed" else 16)]
        if strategy == "deepspeed":  # rank 1 writes its own shards
            points += [(1, p) for p in injection_points(R.read_events(trace, 1), 2)]
    else:
        points = FAST[strategy]
    failed = []
    for n, (victim, selector) in enumerate(points):
        run_dir, fault_dir = tmp_path / f"run{n}", tmp_path / f"faults{n}"
        env = {"MEDLEY_FAULT_IO_ARM": "3", "MEDLEY_FAULT_IO_AT": selector, "MEDLEY_FAULT_RANK": str(victim)}
        codes, out = _run(strategy, run_dir, data_root, fault_dir, env)
        if codes[victim] != -9:
            failed.append(f"rank {victim} at {selector}: not killed (exit codes {codes})\n{out[-2000:]}")
            continue
        problems = check_after_kill(strategy, run_dir, fault_dir) or check_rerun(strategy, run_dir, data_root, fault_dir)
        if problems:
            last = R.read_events(fault_dir, victim)[-1:]
            failed.append(f"rank {victim} killed before {last}: {problems}")
    R.record("SIGKILL while a checkpoint is written", strategy,
             "SIGKILL before one I/O call of the 3rd save (writes, fsync, rename, prune unlink/rmtree, after)",
             len(points), len(points) - len(failed), CHECKS)
    assert not failed, "\n".join(failed)
