"""Method cost: step time and peak step memory of every algorithm plugin relative to a baseline
on the same backbone, data and batch.

    OMP_NUM_THREADS=1 python benchmarks/method_cost.py [--steps 5] [--rounds 3] [--only gradsplit,pcgrad]

Each method runs with its family's experiment settings (model, data, batch); the baseline is
``equal_weight`` where the data is a plain multi-task batch, else the family's plain arm (the
baseline the method's benchmark compares against). Both trainers are built once and fed the
same batches from memory; they alternate in blocks of ``--steps`` optimizer steps (order
alternating, the first round dropped) and the ratio is the median over rounds. Peak memory is
the highest sum of live CPU allocations during one step (``torch.profiler`` with
``profile_memory``), parameters and optimizer state excluded. ``ops/step`` counts the operators
one step dispatches (forward, backward, optimizer): on a GPU each costs a few microseconds of
host time whatever its size, so on small models this count, not FLOPs, sets the step-time ratio.
Multi-phase methods are measured in their first phase.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import compose, interleaved, median, ratio, save, table  # noqa: E402

# method -> (baseline, overrides shared by both arms)
MULTIMNIST = ["data=multimnist", "data.batch_size=128", "model.widths=[16,32,64]"]
MULTI_SOURCE = ["experiment=gradsplit_multi_source"]
DIGITS = ["experiment=cdcl_digits"]
FACES_EPISODIC = ["experiment=cdt_faces", "algorithm.pairs_per_step=1"]
FACES_META = ["experiment=mvcom_faces"]
SCENES = ["experiment=dymu_dense_scenes"]
SEG = ["experiment=uniseg_label_shift"]
METHODS: dict[str, tuple[str, list[str]]] = {
    "gradsplit": ("equal_weight", [*MULTIMNIST, "algorithm.mode=exact"]),
    "pcgrad": ("equal_weight", MULTIMNIST),
    "task_heads": ("equal_weight", MULTIMNIST),
    "single_task": ("equal_weight", MULTIMNIST),
    "gradsplit@multi_source": ("equal_weight", MULTI_SOURCE),
    "cdcl": ("cdcl_finetune", DIGITS),
    "cdcl_lwf": ("cdcl_finetune", DIGITS),
    "cdcl_er": ("cdcl_finetune", DIGITS),
    "cdcl_linear_mov": ("cdcl_finetune", DIGITS),
    "cdt": ("face_cosface", FACES_EPISODIC),
    "cdt_meta": ("face_cosface", FACES_EPISODIC),
    "mvcom": ("mvcom_cosface", [*FACES_META, "algorithm.meta_warmup=0"]),  # meta updates from step 1
    "dymu": ("dymu_hard_sharing", SCENES),
    "phn_bn": ("dymu_hard_sharing", SCENES),
    "dymu_single_task": ("dymu_hard_sharing", SCENES),
    "uniseg": ("uniseg_ce", SEG),
    "uniseg_bce": ("uniseg_ce", SEG),
    "uniseg_bce_null": ("uniseg_ce", SEG),
}


def build(name: str, shared: list[str], run_root: Path, own: bool = True):
    """A trainer for ``name`` in its first phase, with the shared settings, and its data (keys of
    ``algorithm.`` in ``shared`` apply to the method only)."""
    from benchmarks.overhead import data_module
    from framework.config import plugin_config
    from framework.registry import ALGORITHMS
    from framework.run import build_strategy
    from framework.trainer import Trainer

    algorithm = name.split("@")[0]
    if not own:
        shared = [o for o in shared if not o.startswith("algorithm.")]
    cfg = compose(*shared, f"algorithm={algorithm}", "logger.tensorboard=false", f"paths.run_root={run_root}")
    strategy = build_strategy(cfg)
    dm = data_module(cfg)
    alg = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
    trainer = Trainer(cfg, strategy, alg, dm, None)
    phase = trainer.plan.phases[0]
    getattr(dm, "set_phase", lambda _: None)(phase.data or phase.name)
    alg.on_phase_start(phase.name, trainer.model, trainer.ctx)
    return trainer, dm


def peak_step_bytes(step) -> int:
    """Highest running sum of CPU allocations minus frees during one call of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def dispatched_ops(step) -> int:
    """Operators dispatched during one call of ``step`` (every aten call, views included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    counter = Count()
    counter.n = 0
    with counter:
        step()
    return counter.n


def measure(method: str, steps: int, rounds: int, run_root: Path) -> list:
    from framework.trainer import _Window

    baseline, shared = METHODS[method]
    torch.manual_seed(0)
    trainers = {}
    for name in (method, baseline):
        trainer, dm = build(name, shared, run_root, own=name == method)
        stream = dm.epoch_batches()
        batches = [next(stream) for _ in range(steps)]
        trainers[name] = (trainer, itertools.cycle(batches))

    def arm(name: str):
        trainer, batches = trainers[name]

        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(batches, _Window())
            return (time.perf_counter() - t0) / steps
        return run

    times = interleaved({method: arm(method), baseline: arm(baseline)}, rounds)
    mem = {n: peak_step_bytes(lambda t=t, b=b: t.train_step(b, _Window())) for n, (t, b) in trainers.items()}
    ops = {n: dispatched_ops(lambda t=t, b=b: t.train_step(b, _Window())) for n, (t, b) in trainers.items()}
    return [method, baseline, " ".join(shared), median(times[method]) * 1e3, median(times[baseline]) * 1e3,
            ratio(times, method, baseline), mem[method] / 2**20, mem[baseline] / 2**20,
            mem[method] / max(mem[baseline], 1), ops[method], ops[baseline]]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per arm per round")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (one more is a warm-up)")
    p.add_argument("--only", default="", help="comma-separated methods (default: all)")
    ns = p.parse_args(argv)
    methods = [m for m in METHODS if not ns.only or m in ns.only.split(",")]
    run_root = Path(tempfile.mkdtemp(prefix="medley-method-cost-"))
    rows, failed = [], {}
    for method in methods:
        t0 = time.time()
        try:
            rows.append(measure(method, ns.steps, ns.rounds, run_root))
            print(f"{method}: {rows[-1][5]:.3f}x step time, {rows[-1][8]:.3f}x peak memory ({time.time() - t0:.0f} s)",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - one method's failure must not hide the others
            failed[method] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    headers = ["method", "baseline", "settings", "ms/step", "baseline ms/step", "step ratio", "peak MiB",
               "baseline peak MiB", "memory ratio", "ops/step", "baseline ops/step"]
    print(table(headers, rows))
    for m, why in failed.items():
        print(f"not measured: {m}: {why}")
    result = {"steps": ns.steps, "rounds": ns.rounds, "headers": headers, "rows": rows, "failed": failed}
    save("method_cost", result)
    return result


if __name__ == "__main__":
    main()
