"""Runs that race: two ``medley train`` of one name started in the same second on a data root
where the dataset is not prepared yet, and ``resume=auto`` while a run of that name is still
being written. Each run gets its own directory with its own complete files, the dataset is
prepared once, and a live run is never resumed."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from framework.run import claim_new_run_dir
from tests.conftest import REPO
from tests.helpers import reliability as R

pytestmark = [pytest.mark.reliability, pytest.mark.distributed, pytest.mark.timeout(R.TIMEOUT_S)]
REPEAT = 5 if R.FULL else 1


def _start(overrides: list[str], data_root: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(R.train_cmd(*overrides), cwd=REPO, env=R.base_env(data_root, env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _complete(run_dir: Path, steps: int) -> list[str]:
    problems = []
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    logged = [json.loads(x)["step"] for x in lines if "train/loss" in json.loads(x)]
    if logged != list(range(1, steps + 1)):
        problems.append(f"{run_dir.name}: metrics steps {logged}")
    summary = run_dir / "summary.json"
    if not summary.exists() or json.loads(summary.read_text())["steps"] != steps:
        problems.append(f"{run_dir.name}: no complete summary")
    return problems


def test_new_run_directories_claimed_in_the_same_second_are_distinct(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20300101-000000")
    out, barrier = [], threading.Barrier(16)

    def claim():
        barrier.wait()
        out.append(claim_new_run_dir(tmp_path / "name"))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = len(set(out)) == 16
    R.record("concurrent runs", "16 threads claim a run directory in one second", "same name, same timestamp",
             1, int(held), ("distinct run directories",))
    assert held, sorted(map(str, out))


def test_two_runs_of_one_name_started_together_get_their_own_directories_and_one_dataset(tmp_path):
    failed, held = [], 0
    for n in range(REPEAT):
        data_root, run_root = tmp_path / f"data{n}", tmp_path / f"runs{n}"  # nothing prepared yet
        overrides = [*R.TINY, "trainer.max_steps=3", "name=same", f"paths.run_root={run_root}",
                     f"paths.data_root={data_root}"]
        procs = [_start(overrides, data_root) for _ in range(2)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        runs = sorted((run_root / "same").iterdir()) if (run_root / "same").is_dir() else []
        problems = [f"exit {p.returncode}: {o[-1500:]}" for p, o in zip(procs, outs) if p.returncode != 0]
        if len(runs) != 2:
            problems.append(f"run directories {runs}")
        for run in runs:
            problems += _complete(run, 3)
        prepared = sorted(p.name for p in data_root.iterdir() if not p.name.endswith(".lock"))
        preparing = sum(o.count("preparing dataset") for o in outs)
        if len(prepared) != 1 or preparing != 1:
            problems.append(f"data root holds {prepared}; 'preparing dataset' logged {preparing} times")
        held += not problems
        failed += [f"repetition {n}: {p}" for p in problems]
    R.record("concurrent runs", "two runs, same name, same second, dataset not yet prepared",
             "2 simultaneous `medley train`", REPEAT, held,
             ("distinct run directories", "complete, non-interleaved files", "one prepared copy"))
    assert not failed, "\n".join(failed)


def test_resume_auto_refuses_a_run_another_process_is_still_writing(data_root, tmp_path):
    run_root, faults = tmp_path / "runs", tmp_path / "faults"
    overrides = [*R.TINY, "trainer.max_steps=30", "trainer.ckpt_every=2", "name=live", "resume=auto",
                 f"paths.run_root={run_root}", f"trainer.callbacks=[\"{R.FAULTS}\"]"]
    # the live run holds after step 4 (its step-2 checkpoint is written) until the second run has ended
    live = _start(overrides, data_root, {"MEDLEY_FAULT_DIR": str(faults), "MEDLEY_FAULT_HOLD_STEP": "4"})
    deadline = time.time() + 300
    while not (faults / "holding").exists() and time.time() < deadline and live.poll() is None:
        time.sleep(0.05)
    t0 = time.time()
    second = _start(overrides, data_root, {"MEDLEY_FAULT_DIR": str(tmp_path / "faults2")})
    out2 = second.communicate(timeout=300)[0]
    took = time.time() - t0
    (faults / "release").write_text("")
    out1 = live.communicate(timeout=300)[0]
    problems = []
    if second.returncode == 0 or "being written by another live process" not in out2:
        problems.append(f"second run: exit {second.returncode}: {out2[-1500:]}")
    runs = sorted((run_root / "live").iterdir())
    if live.returncode != 0 or len(runs) != 1:
        problems.append(f"live run: exit {live.returncode}, runs {runs}: {out1[-1500:]}")
    else:
        problems += _complete(runs[0], 30)
        if json.loads((runs[0] / "summary.json").read_text())["resumed_from"] is not None:
            problems.append("the live run was resumed")
    after = _start(overrides, data_root, {"MEDLEY_FAULT_DIR": str(tmp_path / "faults3")})
    out3 = after.communicate(timeout=300)[0]
    if after.returncode != 0 or "resumed from" not in out3:
        problems.append(f"resume=auto once the run ended: exit {after.returncode}: {out3[-1500:]}")
    R.record("concurrent runs", "resume=auto while a run of that name is live", "a second `medley train resume=auto`",
             1, 0 if problems else 1, ("refused with a message naming the run", "live run unaffected",
                                       "resumable once it ended"), f"refused after {took:.1f} s")
    assert not problems, "\n".join(problems)
