"""Every registered algorithm trains a few steps and evaluates, in one process and — where its
capabilities list ``ddp`` — in 2-process DDP, where the ranks must also end with the same weights.

The cases are read from the registry (and the ``configs/algorithm/`` variants such as
``cdt_meta``), so a new plugin is covered the moment it registers. It runs on the default
setting below (MultiMNIST, a tiny ResNet); an algorithm that needs other data gets an entry in
``OVERRIDES``. The DDP half is one launch whose workers run every case in sequence.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from framework.config import CONFIG_DIR
from framework.hooks import Hook
from framework.registry import ALGORITHMS
from tests.conftest import SHARED_DATA

STEPS = 2
#: the default setting: the config's default dataset (MultiMNIST), tiny and fast
COMMON = ("logger.progress=off", "logger.tensorboard=false", "data.limit=64", "data.batch_size=16",
          "data.eval_batch_size=64", "model.widths=[8,16]", f"trainer.max_steps={STEPS}",
          "trainer.log_every=1")
#: face methods read episodic {domain: P×K} batches: the four face sets beside the checkout
FACES = ("experiment=cdt_faces", "data.limit=100", "data.episode_p=4", "data.episode_k=2",
         "data.holdout_domain=yale", "model.widths=[4,8]", "algorithm.embedding_dim=16",
         "algorithm.triplet_dim=8")
MVCOM = ("experiment=mvcom_faces", "data.limit=100", "model.widths=[4,8]", "algorithm.embedding_dim=16")
# five experiences of one step each: growth, the frozen teacher and the phase-end evaluations all run
CDCL = ("experiment=cdcl_digits", "data.limit=60", "data.batch_size=16", "data.eval_batch_size=64",
        "model.widths=[8,8]", "trainer.max_steps=5")
OVERRIDES: dict[str, tuple[str, ...]] = {
    **{name: CDCL for name in ("cdcl", "cdcl_er", "cdcl_finetune", "cdcl_linear_mov", "cdcl_lwf")},
    "mvcom": MVCOM,
    **{name: ("experiment=uniseg_label_shift", "algorithm.phase_eval_sets=[]")
       for name in ("uniseg", "uniseg_ce", "uniseg_bce", "uniseg_bce_null")},
    **{name: ("algorithm.pretrain_share=0.5", "algorithm.anchor_share=0", "algorithm.edge_share=0.5")
       for name in ("dymu", "dymu_hard_sharing", "dymu_single_task", "phn_bn")},
    "mvcom_cosface": MVCOM,
    "cdt": FACES,
    "cdt_meta": FACES,
    "face_cosface": FACES,
    "gradsplit": ("algorithm.mode=exact",),  # MultiMNIST labels both tasks on every sample
}


def smoke_cases() -> list[str]:
    """Registered algorithms (test-only plugins excluded) and every ``algorithm=`` config file."""
    registered = {n for n in ALGORITHMS.names() if not ALGORITHMS.get(n).source.startswith("tests.")}
    return sorted(registered | {p.stem for p in (CONFIG_DIR / "algorithm").glob("*.yaml")})


CASES = smoke_cases()


def case_overrides(case: str) -> list[str]:
    return [*COMMON, f"algorithm={case}", *OVERRIDES.get(case, ())]


def unavailable(case: str) -> str | None:
    faces = {"experiment=cdt_faces", "experiment=mvcom_faces"}
    if faces & set(OVERRIDES.get(case, ())) and not SHARED_DATA.is_dir():
        return f"the face sets are not at {SHARED_DATA}"
    return None


class Progress(Hook):
    """Per-step losses and how far the parameters moved; a parameter checksum to compare ranks."""

    def __init__(self):
        self.losses: list[float] = []
        self.initial = None
        self.moved = self.checksum = math.nan

    def _params(self, trainer: Any) -> dict:
        model = trainer.strategy.unwrap(trainer.model)
        return {k: p.detach().double().flatten().clone() for k, p in model.named_parameters()}

    def before_fit(self, trainer: Any) -> None:
        self.initial = self._params(trainer)

    def after_step(self, trainer: Any, step: int, losses: dict) -> None:
        self.losses.append(float(sum(float(v) for v in losses.values())))

    def after_fit(self, trainer: Any, summary: dict) -> None:
        final = self._params(trainer)  # a model that grew in later phases has more: compare the first ones
        self.moved = max(float((final[k] - v).abs().max()) for k, v in self.initial.items())
        self.checksum = float(sum(v.sum() for v in final.values()))


def run_case(case: str, data_root: str, run_dir: str, strategy: str) -> dict | None:
    """Compose and train one case; None when the algorithm's capabilities do not list
    ``strategy``. A failure on the default setting says where to give the algorithm its data."""
    from framework.run import train
    from tests.helpers.dist_workers import compose

    progress = Progress()
    try:
        cfg = compose(data_root, *case_overrides(case), f"paths.run_dir={run_dir}", f"strategy={strategy}")
        if strategy not in ALGORITHMS.get(cfg.algorithm.name).load().capabilities.strategies:
            return None
        summary = train(cfg, hooks=[progress])
    except Exception as exc:
        if case in OVERRIDES:
            raise
        raise AssertionError(
            f"algorithm '{case}' fails on the default smoke setting {list(COMMON)}: "
            f"{type(exc).__name__}: {exc}\n"
            f"give it a suitable dataset in OVERRIDES of tests/test_algorithm_smoke.py"
        ) from exc
    return {"case": case, "steps": summary["steps"], "expected_steps": cfg.trainer.max_steps,
            "world_size": summary["world_size"],
            "skipped_steps": summary["skipped_steps"], "final_metrics": summary["final_metrics"],
            "losses": progress.losses, "moved": progress.moved, "checksum": progress.checksum}


def check_trained_and_evaluated(result: dict, world_size: int) -> None:
    case = result["case"]
    steps = result["expected_steps"]
    assert (result["steps"], result["world_size"], result["skipped_steps"]) == (steps, world_size, 0), case
    assert len(result["losses"]) == steps and all(math.isfinite(v) for v in result["losses"]), result
    assert result["moved"] > 0, f"{case}: no parameter changed in {steps} steps"
    assert any(k.startswith("test/") for k in result["final_metrics"]), f"{case}: no test metric {result}"


@pytest.mark.parametrize("case", CASES)
def test_trains_and_evaluates_in_one_process(case, data_root, tmp_path):
    reason = unavailable(case)
    if reason:
        pytest.skip(reason)
    result = run_case(case, str(data_root), str(tmp_path / case), "single")
    if result is None:
        pytest.skip(f"{case}: its capabilities do not list the single strategy")
    check_trained_and_evaluated(result, world_size=1)


def ddp_worker(rank: int, world: int, data_root: str, run_root: str,
               cases: list[str]) -> dict[str, dict | None]:
    """Every case in turn, in one process group (one launch instead of one per algorithm)."""
    from tests.helpers.dist_workers import cpu_only

    cpu_only()
    return {case: run_case(case, data_root, str(Path(run_root) / case), "ddp") for case in cases}


@pytest.mark.distributed
def test_trains_and_evaluates_under_two_process_ddp_with_ranks_in_step(data_root, tmp_path):
    from tests.helpers.distributed import run_workers

    cases = [case for case in CASES if not unavailable(case)]
    rank0, rank1 = run_workers(ddp_worker, world_size=2, args=(str(data_root), str(tmp_path), cases),
                               timeout=300)
    ran = [case for case, result in rank0.items() if result is not None]
    assert ran and [c for c, r in rank1.items() if r is not None] == ran, (rank0.keys(), ran)
    for case in ran:
        check_trained_and_evaluated(rank0[case], world_size=2)
        assert rank0[case]["checksum"] == rank1[case]["checksum"], f"{case}: the ranks' weights differ"
