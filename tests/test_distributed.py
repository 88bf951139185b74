"""Multi-process training with strategy=ddp: the real launchers, one run directory per run,
config agreement across ranks, and the checks that run before any process group starts."""

from __future__ import annotations

import sys
import time

import pytest

from framework.config import ConfigError
from tests.helpers import dist_launch as L
from tests.helpers.dist_workers import (
    accelerate_sees_fewer_processes,
    broadcast_run_dir,
    rank_specific_config,
)
from tests.helpers.distributed import free_port, run_workers

pytestmark = pytest.mark.distributed


# --------------------------------------------------------------------- before any process group
@pytest.mark.parametrize(
    "overrides, env, names",
    [
        (["strategy=ddp"], {"ACCELERATE_MIXED_PRECISION": "bf16"}, ["trainer.precision", "fp32", "bf16"]),
        (["strategy=ddp", "trainer.accumulate_grad_batches=2"], {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"},
         ["trainer.accumulate_grad_batches", "2", "4"]),
        (["strategy=deepspeed", "strategy.zero_stage=2"], {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
         ["strategy.zero_stage", "3", "zero_stage=2"]),
        (["strategy=deepspeed", "trainer.grad_clip=0.5"], {"ACCELERATE_GRADIENT_CLIPPING": "1.0"},
         ["trainer.grad_clip", "0.5", "1.0"]),
        (["strategy=ddp"], {"ACCELERATE_USE_DEEPSPEED": "true"}, ["DeepSpeed", "strategy=ddp"]),
        (["strategy=deepspeed"], {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, ["ds.json", "strategy.*"]),
        (["strategy=single"], {"WORLD_SIZE": "2"}, ["strategy=single", "2 processes"]),
    ],
)
def test_launcher_settings_that_disagree_with_the_config_fail_naming_both(compose, overrides, env, names):
    from framework.strategies.launch import check_launch

    with pytest.raises(ConfigError) as err:
        check_launch(compose(*overrides), env)
    for name in names:
        assert name in str(err.value)


def test_launcher_settings_that_agree_with_the_config_pass(compose):
    from framework.strategies.launch import check_launch

    env = {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "WORLD_SIZE": "2",
           "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_GRADIENT_CLIPPING": "0.5"}
    check_launch(compose("strategy=deepspeed", "strategy.zero_stage=3", "trainer.precision=bf16",
                         "trainer.grad_clip=0.5"), env)


def test_deepspeed_config_is_built_from_the_hydra_config_only(compose):
    from framework.strategies.launch import check_launch, deepspeed_config

    cfg = compose("strategy=deepspeed", "strategy.zero_stage=3", "trainer.accumulate_grad_batches=2",
                  "trainer.precision=bf16", "data.batch_size=8",
                  "+strategy.extra={zero_optimization: {reduce_bucket_size: 1000}}")
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 1000}
    assert ds["gradient_clipping"] == 0.0  # trainer.grad_clip=0 means off; DeepSpeed's own default is 1.0
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in ds
    sizes = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]
    assert sizes == (8, 2, 32)
    with pytest.raises(ConfigError, match=r"strategy.extra.gradient_clipping: set by Medley from trainer.grad_clip"):
        check_launch(compose("strategy=deepspeed", "+strategy.extra={gradient_clipping: 1.0}"), {})
    with pytest.raises(ConfigError, match="use strategy.zero_stage"):
        check_launch(compose("strategy=deepspeed", "+strategy.extra={zero_optimization: {stage: 1}}"), {})


def test_unsupported_algorithm_strategy_pair_fails_before_any_process_group(compose, monkeypatch):
    """The launcher says 2 processes and nobody else will join: a process group would block here
    until its timeout, so failing within seconds proves the check runs first."""
    import torch.distributed as dist

    from algorithms.equal_weight.method import EqualWeight
    from framework import AlgorithmConfig, Capabilities, register_algorithm
    from framework.config import register_schema
    from framework.registry import ALGORITHMS
    from framework.run import train

    class SingleOnly(EqualWeight):
        capabilities = Capabilities(strategies=("single",))

    register_algorithm("single_only", config=AlgorithmConfig, override=True)(SingleOnly)
    register_schema()
    try:
        cfg = compose("algorithm=single_only", "strategy=ddp")
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
        t0 = time.time()
        with pytest.raises(ConfigError, match="algorithm 'single_only' does not support strategy 'ddp'"):
            train(cfg)
        assert time.time() - t0 < 10 and not dist.is_initialized()
    finally:
        ALGORITHMS.unregister("single_only")


# ------------------------------------------------------------------- inside the process group
def test_ranks_that_composed_different_configs_fail_naming_the_key(data_root, tmp_path):
    errors = run_workers(rank_specific_config, world_size=2, args=(str(data_root), str(tmp_path)))
    for message in errors:
        assert message.startswith("optim.lr: rank 1 composed 0.07, rank 0 0.05"), message
    assert not list(tmp_path.rglob("metrics.jsonl"))  # failed before any training


@pytest.fixture(scope="module")
def two_rank_run(data_root, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bcast")
    return {"ranks": run_workers(broadcast_run_dir, world_size=2, args=(str(data_root), str(root))), "root": root}


def test_run_directory_is_broadcast_from_rank_0(two_rank_run):
    dirs = [r["run_dir"] for r in two_rank_run["ranks"]]
    assert dirs[0] == dirs[1]
    assert [p.name for p in (two_rank_run["root"] / "bcast").iterdir()] == [dirs[0].rsplit("/", 1)[1]]


def test_find_unused_parameters_comes_from_the_algorithm_capabilities(two_rank_run):
    for rank in two_rank_run["ranks"]:
        assert rank["find_unused_parameters"] == [False, True]


def test_ddp_fails_at_start_up_when_accelerate_sees_another_process_count():
    (message,) = run_workers(accelerate_sees_fewer_processes, world_size=1)
    assert "Accelerate set up 1 process(es) but the launcher started 2 (WORLD_SIZE)" in message


# ------------------------------------------------------------------------------ real launchers
def test_accelerate_launch_trains_two_processes_into_one_run_directory(data_root, tmp_path):
    run_dir = tmp_path / "run"
    cmd = L.accelerate("cpu_2proc.yaml", "--main_process_port", str(free_port()), "-m", "launchers.train",
                       "strategy=ddp", *L.SMALL, f"paths.run_dir={run_dir}")
    proc = L.run(cmd, data_root)
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = L.summary(run_dir)
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("ddp", 2, 6)
    assert L.logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes the log
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000003.pt", "step-00000006.pt"]
    assert proc.stdout.count("world size 2") == 1  # one summary table, printed by rank 0


def test_accelerate_launch_with_a_conflicting_precision_fails_at_start_up(data_root, tmp_path):
    cmd = L.accelerate("cpu_2proc.yaml", "--main_process_port", str(free_port()), "--mixed_precision", "bf16",
                       "-m", "launchers.train", "strategy=ddp", *L.SMALL, f"paths.run_dir={tmp_path / 'run'}")
    proc = L.run(cmd, data_root, timeout=120)
    assert proc.returncode != 0
    assert "trainer.precision: the config says fp32, the launcher says mixed_precision=bf16" in proc.stdout
    assert not (tmp_path / "run").exists()


def test_torchrun_trains_two_processes(data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = L.run(L.torchrun(2, "-m", "launchers.train", "strategy=ddp", *L.SMALL, f"paths.run_dir={run_dir}"),
                 data_root)
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = L.summary(run_dir)
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("ddp", 2, 6)


def test_plain_python_runs_a_distributed_strategy_as_a_world_of_one(data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = L.run([sys.executable, "-m", "launchers.train", "strategy=ddp", *L.SMALL, f"paths.run_dir={run_dir}"],
                 data_root)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert (L.summary(run_dir)["world_size"], L.summary(run_dir)["steps"]) == (1, 6)


def test_two_nodes_on_one_machine_train_to_the_end(data_root, tmp_path):
    """``--num_machines 2``, one process per "node", both on 127.0.0.1 with the shipped multi-node file."""
    run_dir, port = tmp_path / "run", free_port()
    nodes = [
        L.start(L.accelerate("multinode.yaml", "--num_machines", "2", "--num_processes", "2", "--machine_rank",
                             str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                             "-m", "launchers.train", "strategy=ddp", *L.SMALL, f"paths.run_dir={run_dir}"),
                data_root)
        for rank in (0, 1)
    ]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=240)[0])
        except Exception:
            for n in nodes:
                n.kill()
            raise
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    summary = L.summary(run_dir)
    assert (summary["world_size"], summary["steps"]) == (2, 6)
    assert "world size 2" in outputs[0] and "world size 2" not in outputs[1]  # machine 1 holds rank 1 only
