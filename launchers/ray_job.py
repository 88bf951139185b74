"""``python -m launchers.ray_job [launcher flags] [overrides]``: the same trainer on Ray Train.

Against a running cluster::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m launchers.ray_job --num-workers 4 --max-failures 2 algorithm=equal_weight ...

or as a plain ``python -m launchers.ray_job ...``, which starts a local Ray (``--address`` or
``RAY_ADDRESS`` joins an existing one instead).

The driver composes the config once (Hydra overrides, exactly as ``medley train``), makes
``paths.data_root`` / ``paths.run_root`` absolute and picks the run directory, then hands the
resolved config to a ``TorchTrainer``. Every worker runs ``framework.run.train`` with
``strategy=ddp`` on the process group Ray has set up. Workers report to Ray only at checkpoint
and evaluation steps (each report is a barrier across workers). After a worker dies, Ray
restarts the group (``--max-failures``) and every worker resumes from the newer of
``ray.train.get_checkpoint()`` and the run's own last committed checkpoint, so the step counter
continues where the last checkpoint left it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from framework.checkpoint import latest
from framework.hooks import Hook

_STEP_FILE = "step-{:08d}.pt"


# ------------------------------------------------------------------------------ the driver
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m launchers.ray_job", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    parser.add_argument("--num-workers", type=int, default=2, help="training processes (one per GPU with --use-gpu)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, nccl")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--resources-per-worker", default="{}", help='extra resources as JSON, e.g. \'{"A100": 1}\'')
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts before the run fails")
    parser.add_argument("--hook", action="append", default=[], metavar="MODULE:CLASS",
                        help="extra trainer hook instantiated in every worker (repeatable)")
    local = parser.add_argument_group("local Ray (started when no address is given)")
    local.add_argument("--num-cpus", type=int, default=None)
    local.add_argument("--object-store-memory", type=int, default=None, help="bytes (Ray's default is ~30%% of RAM)")
    local.add_argument("--temp-dir", default=None)
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown launcher flag(s): {' '.join(unknown)} (config overrides are key=value)")
    return args, overrides


def compose(overrides: list[str]) -> Any:
    """Compose and validate as ``medley train`` does; Ray runs ``strategy=ddp`` on its process group."""
    from framework.compose import compose as compose_config
    from framework.config import ConfigError

    if not any(o.split("=", 1)[0].lstrip("+~") == "strategy" for o in overrides):
        overrides = ["strategy=ddp", *overrides]
    cfg = compose_config(overrides)
    if cfg.strategy.name != "ddp":
        raise ConfigError(f"strategy.name: launchers.ray_job trains with strategy=ddp on Ray's process group, "
                          f"got strategy={cfg.strategy.name}")
    return cfg


def plan_run(cfg: Any) -> Any:
    """Absolute data and run roots (Ray workers do not run in the launch directory) and one run
    directory for every attempt of this job."""
    from omegaconf import OmegaConf

    from framework.run import check_capabilities, resolve_run_dir
    from framework.strategies.base import Strategy

    OmegaConf.set_struct(cfg, False)
    cfg.paths.data_root = str(Path(cfg.paths.data_root).expanduser().resolve())
    cfg.paths.run_root = str(Path(cfg.paths.run_root).expanduser().resolve())
    check_capabilities(cfg)
    cfg.paths.run_dir = str(resolve_run_dir(cfg, Strategy()))
    OmegaConf.set_struct(cfg, True)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from omegaconf import OmegaConf

    from framework.config import ConfigError

    try:
        cfg = plan_run(compose(overrides))
    except ConfigError as exc:
        sys.exit(f"medley: config error: {exc}")
    for hook in args.hook:
        load_hook(hook)  # fail here, not in every worker
    print(f"medley ray_job: data_root={cfg.paths.data_root}", flush=True)
    print(f"medley ray_job: run_root={cfg.paths.run_root}", flush=True)
    print(f"medley ray_job: run_dir={cfg.paths.run_dir}", flush=True)

    if not args.address:  # read when ray is imported: keep a local Ray on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started_here = connect(args)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker=worker_loop,
            train_loop_config={"cfg": OmegaConf.to_container(cfg, resolve=True), "hooks": args.hook},
            torch_config=TorchConfig(backend="nccl" if args.use_gpu else "gloo", timeout_s=cfg.strategy.timeout_s),
            scaling_config=ScalingConfig(
                num_workers=args.num_workers, use_gpu=args.use_gpu,
                resources_per_worker={"CPU": args.cpus_per_worker, **json.loads(args.resources_per_worker)}),
            run_config=RunConfig(
                name="ray", storage_path=cfg.paths.run_dir,
                failure_config=FailureConfig(max_failures=args.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=max(cfg.trainer.keep_last, 1))),
        )
        trainer.fit()
    finally:
        if started_here:
            ray.shutdown()
    summary = json.loads((Path(cfg.paths.run_dir) / "summary.json").read_text())
    from framework.run import print_summary

    print_summary(summary)
    return 0


def connect(args: argparse.Namespace) -> bool:
    """Join ``--address`` / ``RAY_ADDRESS``, else start a local Ray; True when started here."""
    import ray

    # workers start from the cluster's environment: give them this checkout and the MEDLEY_* settings
    env = {k: v for k, v in os.environ.items() if k.startswith("MEDLEY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    if args.address:
        ray.init(address=args.address, runtime_env={"env_vars": env} if not _in_ray_job() else None)
        return False
    ray.init(address="local", num_cpus=args.num_cpus, object_store_memory=args.object_store_memory,
             include_dashboard=False, _temp_dir=args.temp_dir, runtime_env={"env_vars": env})
    return True


def _in_ray_job() -> bool:
    """Under ``ray job submit`` the job's runtime env (working dir on PYTHONPATH) already applies."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def load_hook(spec: str) -> Hook:
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--hook {spec}: expected MODULE:CLASS")
    return getattr(importlib.import_module(module), name)()


# ------------------------------------------------------------------------------ the workers
def worker_loop(config: dict) -> None:
    """One Ray Train worker: the ordinary ``train()`` with strategy=ddp on Ray's process group."""
    from omegaconf import OmegaConf

    from framework.config import validate
    from framework.registry import load_plugins
    from framework.run import build_strategy, train

    load_plugins()
    cfg = validate(OmegaConf.create(config["cfg"]))
    OmegaConf.set_struct(cfg, False)
    cfg.resume = resume_point(Path(cfg.paths.run_dir), cfg.resume)
    OmegaConf.set_struct(cfg, True)
    # Ray destroys its process group when the worker group shuts down; the strategy first lets go
    # of the DDP wrapper and waits for every worker, so no worker leaves while another still talks
    strategy = build_strategy(cfg)
    try:
        train(cfg, hooks=[RayReport(), *(load_hook(h) for h in config["hooks"])], strategy=strategy)
    finally:
        strategy.teardown()


def resume_point(run_dir: Path, requested: str | None) -> str | None:
    """The newer of Ray's checkpoint and the run's own last committed one; on the first attempt
    (neither exists) whatever the user asked for."""
    import ray.train

    own = latest(run_dir / "checkpoints")
    best, best_step = (str(own), _step(own)) if own else (None, -1)
    reported = ray.train.get_checkpoint()  # its directory is named after the step it holds
    if reported is not None and _step(Path(reported.path)) > best_step:
        local = Path(reported.to_directory(tempfile.mkdtemp(prefix="medley-ray-ckpt-")))
        best = str(latest(local))
    return best or requested


def _step(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


class RayReport(Hook):
    """``ray.train.report`` at checkpoint and evaluation steps only (each report is a barrier).

    The final checkpoint is reported together with the final metrics, so Ray's ``Result``
    carries both."""

    def after_checkpoint(self, trainer: Any, path: Any) -> None:
        if path is not None and trainer.ctx.global_step < trainer.cfg.trainer.max_steps:
            self._report(trainer, {}, path)

    def after_eval(self, trainer: Any, split: str, metrics: dict) -> None:
        if trainer.ctx.global_step < trainer.cfg.trainer.max_steps:
            self._report(trainer, metrics, None)

    def after_fit(self, trainer: Any, summary: dict) -> None:
        path = trainer.run_dir / "checkpoints" / _STEP_FILE.format(trainer.ctx.global_step)
        self._report(trainer, summary["final_metrics"], path)

    def _report(self, trainer: Any, metrics: dict, path: Path | None) -> None:
        import ray.train

        values = {"step": trainer.ctx.global_step, **metrics}
        if path is None or not trainer.strategy.is_global_zero:
            ray.train.report(values)
            return
        with tempfile.TemporaryDirectory(prefix="medley-ray-report-") as tmp:
            shutil.copy2(path, Path(tmp) / _STEP_FILE.format(trainer.ctx.global_step))
            ray.train.report(values, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step-{trainer.ctx.global_step:08d}")


if __name__ == "__main__":
    sys.exit(main())
