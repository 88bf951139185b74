#!/usr/bin/env bash
# One-GPU cost check, printed as one table (≤ 8 minutes, no network, synthetic MultiMNIST-shaped
# batches so no dataset is needed):
#   - the demo model's training step, fp32 and bf16 autocast: ms/step, samples/s, peak memory
#   - DistributedDataParallel on 1 GPU (world of one) against the plain model: wrapper overhead
#   - Medley's trainer step (bf16) against the same hand-written step: framework overhead
#   - GradSplit's step time against equal-weight on the same backbone and batch
#   - DeepSpeed ZeRO-2 on 1 GPU through Medley (bf16)
# Rows that need a package this machine lacks (Medley's config stack, DeepSpeed) say so and are
# skipped; the torch-only rows always run. Ratios come from arms run in turn (order alternating,
# first round dropped, median over rounds).
#
#   benchmarks/gpu_check.sh                 # on a CUDA machine
#   benchmarks/gpu_check.sh --cpu-dry-run   # every code path on the CPU, a few steps (no GPU numbers)
#
# Environment: PYTHON (default: .venv/bin/python when present, else python3). CI never runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
case "${1:-}" in
  --cpu-dry-run) export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ;;
  "") ;;
  *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PY" - "$@" <<'PYTHON'
import argparse
import importlib.util
import itertools
import os
import socket
import statistics
import sys
import time
import traceback

import torch

p = argparse.ArgumentParser()
p.add_argument("--cpu-dry-run", action="store_true")
ns = p.parse_args()
dry = ns.cpu_dry_run
if not dry and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible (use --cpu-dry-run to check the script on a CPU)")
dev = torch.device("cpu" if dry else "cuda")
STEPS, WARMUP, ROUNDS = (3, 1, 2) if dry else (60, 15, 3)
BATCH, TASKS, SHAPE = 128, {"left": 10, "right": 10}, (1, 28, 28)
rows = []


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def reset_peak():
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib():
    return torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")


def per_step(step, steps=STEPS, warmup=WARMUP):
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def interleaved(a, b):
    """Median over rounds of per-step time of a and b, run in turn (first round dropped)."""
    ta, tb = [], []
    for r in range(ROUNDS + 1):
        order = (("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))
        got = {k: per_step(f) for k, f in order}
        if r:
            ta.append(got["a"]), tb.append(got["b"])
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def cell(v, fmt):
    return "" if v is None or v != v else format(v, fmt)


def add(check, ms=None, sps=None, mib=None, ratio=None, note=""):
    rows.append((check, ms, sps, mib, ratio, note))
    print(f"  {check}: done", file=sys.stderr, flush=True)


def demo_model():
    """Medley's demo backbone: framework.models when Medley's dependencies are installed, else
    the same torch-only module file loaded directly."""
    try:
        from framework.models.resnet import MultiTaskNet, ResNet
    except ImportError:
        spec = importlib.util.spec_from_file_location("medley_resnet", "framework/models/resnet.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        MultiTaskNet, ResNet = mod.MultiTaskNet, mod.ResNet
    torch.manual_seed(0)
    return MultiTaskNet(ResNet(SHAPE[0], [16, 32, 64], 1, "batch", 2), TASKS, 0).to(dev)


g = torch.Generator().manual_seed(0)
BATCHES = [{"image": torch.rand(BATCH, *SHAPE, generator=g).to(dev),
            "labels": {t: torch.randint(0, n, (BATCH,), generator=g).to(dev) for t, n in TASKS.items()},
            "id": torch.arange(BATCH, device=dev), "mask": torch.ones(BATCH, dtype=torch.bool, device=dev)}
           for _ in range(8)]


def hand_step(model, bf16):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    it = itertools.cycle(BATCHES)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast(dev.type, enabled=False))

    def step():
        b = next(it)
        with ctx():
            out = model(b["image"])
            loss = sum(torch.nn.functional.cross_entropy(out[t], b["labels"][t]) for t in out)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


print(f"gpu_check: torch {torch.__version__}, device {torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu (dry run)'}",
      file=sys.stderr)

# 1-2. the demo model's step, fp32 and bf16
for label, bf16 in (("demo step fp32", False), ("demo step bf16", True)):
    reset_peak()
    t = per_step(hand_step(demo_model(), bf16))
    add(label, t * 1e3, BATCH / t, peak_mib())

# 3. DDP wrapper on a world of one
try:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=0, world_size=1)
    plain, wrapped = demo_model(), DistributedDataParallel(demo_model(), device_ids=[0] if dev.type == "cuda" else None)
    tw, tp, r = interleaved(hand_step(wrapped, True), hand_step(plain, True))
    add("DDP(1 GPU) / plain, bf16", tw * 1e3, BATCH / tw, None, r)
except Exception as exc:  # noqa: BLE001
    add("DDP(1 GPU) / plain, bf16", note=f"failed: {type(exc).__name__}: {exc}")

# 4-6. through Medley (needs its config stack)
try:
    import omegaconf  # noqa: F401

    from framework.compose import compose
    have_medley = True
except ImportError as exc:
    have_medley, why = False, f"skipped: {exc.name} not installed (pip install -e '.[distributed]')"


class Data:
    """Synthetic batches for a trainer: MultiMNIST's tasks and image shape."""

    def __init__(self):
        from framework.data.info import DataInfo

        self.manifest = {"name": "multimnist", "image_shape": list(SHAPE), "splits": {},
                         "tasks": {t: {"classes": [str(i) for i in range(n)]} for t, n in TASKS.items()}}
        self.info = DataInfo.from_manifest(self.manifest)


def medley_trainer(*overrides):
    from framework.config import plugin_config
    from framework.registry import ALGORITHMS
    from framework.run import build_strategy
    from framework.trainer import Trainer

    cfg = compose(["experiment=demo", "logger.progress=off", "logger.tensorboard=false", *overrides])
    alg = ALGORITHMS.get(cfg.algorithm.name).load()(plugin_config(cfg.algorithm, ALGORITHMS), cfg)
    return Trainer(cfg, build_strategy(cfg), alg, Data(), None)


def trainer_step(trainer):
    from framework.trainer import _Window

    it = itertools.cycle([{k: v for k, v in b.items()} for b in BATCHES])
    return lambda: trainer.train_step(it, _Window())


if have_medley:
    try:
        medley = trainer_step(medley_trainer("trainer.precision=bf16", "optim.warmup_steps=0"))
        tm, th, r = interleaved(medley, hand_step(demo_model(), True))
        add("Medley trainer / hand loop, bf16", tm * 1e3, BATCH / tm, None, r, "target ≤ 1.02")
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        add("Medley trainer / hand loop, bf16", note=f"failed: {type(exc).__name__}: {exc}")
    try:
        reset_peak()
        gs = trainer_step(medley_trainer("algorithm=gradsplit", "algorithm.mode=exact"))
        gs()
        gs_peak = peak_mib()
        reset_peak()
        ew = trainer_step(medley_trainer("algorithm=equal_weight"))
        ew()
        ew_peak = peak_mib()
        tg, te, r = interleaved(gs, ew)
        add("GradSplit / equal-weight, fp32", tg * 1e3, BATCH / tg, gs_peak, r,
            f"equal-weight {te * 1e3:.2f} ms, {cell(ew_peak, '.0f') or '-'} MiB; target ≤ 1.10")
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        add("GradSplit / equal-weight, fp32", note=f"failed: {type(exc).__name__}: {exc}")
    try:
        import deepspeed  # noqa: F401

        reset_peak()
        ds = trainer_step(medley_trainer("strategy=deepspeed", "strategy.zero_stage=2", "trainer.precision=bf16"))
        t = per_step(ds)
        add("DeepSpeed ZeRO-2 (1 GPU), bf16", t * 1e3, BATCH / t, peak_mib())
    except ImportError as exc:
        add("DeepSpeed ZeRO-2 (1 GPU), bf16", note=f"skipped: {exc.name} not installed")
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        add("DeepSpeed ZeRO-2 (1 GPU), bf16", note=f"failed: {type(exc).__name__}: {exc}")
else:
    for check in ("Medley trainer / hand loop, bf16", "GradSplit / equal-weight, fp32", "DeepSpeed ZeRO-2 (1 GPU), bf16"):
        add(check, note=why)


print(f"\n{'dry run on CPU: code paths only, not GPU numbers' if dry else torch.cuda.get_device_name(0)}; "
      f"batch {BATCH}, {STEPS} steps after {WARMUP} warm-up, ratios: median of {ROUNDS} rounds")
print("| check | ms/step | samples/s | peak MiB | ratio | note |")
print("|---|---|---|---|---|---|")
for check, ms, sps, mib, ratio, note in rows:
    print(f"| {check} | {cell(ms, '.2f')} | {cell(sps, '.0f')} | {cell(mib, '.0f')} | {cell(ratio, '.3f')} | {note} |")
PYTHON
