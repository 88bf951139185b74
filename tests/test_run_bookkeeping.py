"""What a start, a refused start and a resume write into a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tests.helpers.toy_algorithms  # noqa: F401 - registers toy_owned
from framework.hooks import Hook
from framework.run import train


class StopAt(Hook):
    def __init__(self, step: int):
        self.step = step

    def after_checkpoint(self, trainer, path):
        if trainer.ctx.global_step == self.step:
            raise KeyboardInterrupt


class StopAfterLogging(Hook):
    """Dies a few steps *after* a checkpoint, once those steps are in metrics.jsonl."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, step, losses):
        if step == self.step:
            raise KeyboardInterrupt


def test_refused_resume_leaves_the_old_run_unchanged(compose, tmp_path):
    run = tmp_path / "run"
    train(compose("trainer.max_steps=4", f"paths.run_dir={run}"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    ckpt = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(ckpt, weights_only=True)
    state["world_size"] = 2  # as if written by a 2-process run
    torch.save(state, ckpt)
    before[ckpt] = ckpt.read_bytes()
    with pytest.raises(ValueError, match="data-parallel size 2"):
        train(compose("trainer.max_steps=8", "name=other", f"paths.run_dir={run}", "resume=auto"))
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[p] == before[p] for p in before), [str(p) for p in before if after[p] != before[p]]


def test_resume_from_a_path_logs_each_step_once_and_sums_the_segments(compose, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(compose("trainer.max_steps=12", "trainer.ckpt_every=4", "trainer.log_every=1", f"paths.run_dir={run}"),
              hooks=[StopAfterLogging(7)])  # steps 5 and 6 reach the log, then the process dies
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 6
    ckpt = run / "checkpoints" / "step-00000004.pt"
    summary = train(compose("trainer.max_steps=12", "trainer.log_every=1", f"paths.run_dir={run}",
                            f"resume={ckpt}"))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [x["step"] for x in lines if "train/loss" in x]
    assert train_steps == list(range(1, 13))  # steps 5 and 6 of the interrupted segment are not repeated
    segments = summary["segments"]
    assert [(s["start_step"], s["end_step"]) for s in segments] == [(0, 4), (4, 12)]
    assert summary["wall_s"] == pytest.approx(sum(s["wall_s"] for s in segments), abs=2e-3)
    assert segments[0]["wall_s"] > 0


def test_weights_only_resume_keeps_the_algorithms_owned_parameters(compose, tmp_path):
    first = train(compose("algorithm=toy_owned", "trainer.max_steps=6", "optim.lr=0.2", f"paths.run_dir={tmp_path / 'a'}"))
    ckpt = sorted((Path(first["run_dir"]) / "checkpoints").glob("step-*.pt"))[-1]
    trained = torch.load(ckpt, weights_only=True)["algorithm"]["owned"]["log_var"]
    assert trained.abs().sum() > 0

    seen = {}

    class Peek(Hook):
        def before_fit(self, trainer):
            seen["log_var"] = trainer.algorithm.owned_module().log_var.detach().clone()
            seen["step"] = trainer.ctx.global_step

    train(compose("algorithm=toy_owned", "trainer.max_steps=2", f"paths.run_dir={tmp_path / 'b'}", f"resume={ckpt}",
                  "resume_weights_only=true"), hooks=[Peek()])
    assert seen["step"] == 0  # the step counter starts fresh
    assert torch.equal(seen["log_var"], trained)


def test_deepspeed_refuses_an_algorithm_with_owned_parameters_before_anything_exists(tmp_path, data_root):
    from tests.conftest import run_cli

    runs = tmp_path / "runs"
    out = run_cli("-c", "import tests.helpers.toy_algorithms, sys; from launchers import train; "
                  "sys.argv=['train','algorithm=toy_owned','strategy=deepspeed',"
                  f"'paths.run_root={runs}','paths.data_root={data_root}']; train.run()", timeout=120)
    assert out.returncode != 0
    assert "algorithm 'toy_owned' cannot run under strategy 'deepspeed'" in out.stderr
    assert "owned_module" in out.stderr
    assert not runs.exists()  # no run directory was created
    assert "deepspeed" not in out.stderr.lower().split("cannot run under")[0]  # refused before DeepSpeed loads


def test_callbacks_named_in_the_config_run_with_the_algorithms(compose, tmp_path):
    import tests.helpers.toy_phases  # noqa: F401

    summary = train(compose("algorithm=toy_phases", "trainer.callbacks=[tests.helpers.callbacks:CountPhases]"))
    counts = json.loads((Path(summary["run_dir"]) / "phase_counts.json").read_text())
    assert counts == {"left": 4, "both": 6, "heads": 3}


def _hold_until_told(pipe):
    pipe.recv()


def test_the_run_lock_is_released_by_its_run_even_while_forked_workers_it_started_live(tmp_path):
    import multiprocessing
    import subprocess
    import sys

    from framework.run import RunInUseError, lock_run_dir

    lock = lock_run_dir(tmp_path)
    probe = [sys.executable, "-c",
             "import sys; from pathlib import Path; from framework.run import lock_run_dir; "
             "lock_run_dir(Path(sys.argv[1]))", str(tmp_path)]
    held = subprocess.run(probe, capture_output=True, text=True)
    assert held.returncode != 0 and "being written by another live process" in held.stderr
    ctx = multiprocessing.get_context("fork")  # how DataLoader workers start on Linux
    ours, theirs = ctx.Pipe()
    worker = ctx.Process(target=_hold_until_told, args=(theirs,))
    worker.start()
    try:
        lock.close()  # the run ended (an interrupt); its worker has not exited yet
        again = lock_run_dir(tmp_path)  # a resume in the same process
        assert subprocess.run(probe, capture_output=True).returncode != 0
        again.close()
        assert subprocess.run(probe, capture_output=True).returncode == 0
    finally:
        ours.send(None)
        worker.join(10)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from pathlib import Path; from framework.run import lock_run_dir; "
                               "h = lock_run_dir(Path(sys.argv[1])); print('held', flush=True); time.sleep(30)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):  # the refusal names the holder
            lock_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
