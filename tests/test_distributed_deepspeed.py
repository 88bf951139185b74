"""strategy=deepspeed: the checkpoint protocol, exact resume, data-parallel size checks, and the
real ``deepspeed`` launcher."""

from __future__ import annotations

import pickle

import pytest
import torch

from tests.helpers import dist_launch as L
from tests.helpers.dist_workers import deepspeed_interrupt_and_resume, deepspeed_resume_at_world_one
from tests.helpers.distributed import run_workers

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def interrupted(data_root, tmp_path_factory) -> dict:
    """2 processes, ZeRO-2: an uninterrupted run, and one killed after its step-4 checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("ds")
    rank0, _ = run_workers(deepspeed_interrupt_and_resume, world_size=2, args=(str(data_root), str(root)), timeout=300)
    return {**rank0, "root": root}


def test_a_checkpoint_is_shard_directory_plus_pointer_with_nothing_half_written(interrupted):
    listing = interrupted["listing_after_interrupt"]
    assert "step-00000004.pt" in listing and "step-00000004.ds" in listing
    shards = [p for p in listing if p.startswith("step-00000004.ds/")]
    assert any("optim_states" in p for p in shards) and any("model_states" in p for p in shards)
    assert not [p for p in listing if ".tmp" in p]  # the temporary tag was renamed, not copied
    assert "latest" not in listing  # save_latest=False: Medley's pointer, not DeepSpeed's, marks the newest


def test_resume_after_interruption_matches_the_uninterrupted_run(interrupted):
    summary = interrupted["summary"]
    assert (summary["steps"], summary["resumed_from"], summary["world_size"]) == (8, 4, 2)
    for key, value in interrupted["full"].items():
        assert torch.equal(torch.as_tensor(interrupted["resumed"][key]), torch.as_tensor(value)), key


def test_pointer_loads_with_weights_only_and_deepspeed_optimizer_shards_do_not(interrupted):
    """Documented in docs/distributed.md: the pointer (trainer state + consolidated weights) is
    plain tensors; DeepSpeed's optimizer shards pickle DeepSpeed classes, so they are trusted-only
    (DeepSpeed itself reads every shard with weights_only=False)."""
    ckpt = interrupted["root"] / "split" / "checkpoints"
    pointer = torch.load(ckpt / "step-00000008.pt", weights_only=True)
    assert pointer["format"] == "deepspeed" and pointer["deepspeed"]["world_size"] == 2
    assert set(pointer["model"]) == set(interrupted["full"])
    optim_shards = sorted((ckpt / "step-00000008.ds").glob("*optim_states.pt"))
    assert len(optim_shards) == 2  # one per rank
    for shard in optim_shards:
        with pytest.raises(pickle.UnpicklingError, match="GLOBAL deepspeed"):
            torch.load(shard, weights_only=True)
        torch.load(shard, weights_only=False)  # readable when trusted
    torch.load(ckpt / "step-00000008.ds" / "mp_rank_00_model_states.pt", weights_only=True)


@pytest.fixture(scope="module")
def at_world_one(interrupted, data_root, tmp_path_factory) -> dict:
    checkpoint = interrupted["root"] / "split" / "checkpoints" / "step-00000008.pt"
    root = tmp_path_factory.mktemp("world1")
    (out,) = run_workers(deepspeed_resume_at_world_one, world_size=1,
                         args=(str(data_root), str(checkpoint), str(root)), timeout=300)
    return {**out, "root": root, "checkpoint": checkpoint}


def test_resuming_at_another_data_parallel_size_fails_naming_both(at_world_one):
    error = at_world_one[False]["error"]
    assert "written at data-parallel size 2, this run has 1" in error and "resume_weights_only=true" in error
    assert not (at_world_one["root"] / "weights_only_false" / "checkpoints").exists()  # failed before training


def test_resume_weights_only_at_another_size_starts_from_the_saved_weights(at_world_one):
    out = at_world_one[True]
    assert (out["summary"]["world_size"], out["summary"]["steps"]) == (1, 2)  # step counter starts fresh
    saved = torch.load(at_world_one["checkpoint"], weights_only=True)["model"]
    for key, value in saved.items():
        assert torch.equal(torch.as_tensor(out["initial"][key]), value), key


def test_deepspeed_launcher_trains_zero_3(data_root, tmp_path):
    run_dir = tmp_path / "run"
    cmd = L.deepspeed(2, "--module", "launchers.train", "strategy=deepspeed", "strategy.zero_stage=3", *L.SMALL,
                      f"paths.run_dir={run_dir}")
    proc = L.run(cmd, data_root)
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = L.summary(run_dir)
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("deepspeed", 2, 6)
    assert L.logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "checkpoints" / "step-00000006.ds").is_dir()
    assert "deepspeed_shm_comm" not in proc.stdout  # the CPU shared-memory op was not compiled
