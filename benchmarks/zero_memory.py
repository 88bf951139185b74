"""Model-state bytes per rank under DDP and DeepSpeed ZeRO-1/2/3 against the ZeRO paper's model.

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 python benchmarks/zero_memory.py [--world 2]

fp32 Adam keeps parameters (4 B/param), gradients (4 B) and two moments (8 B): 16 B/param under
DDP; ZeRO-1 partitions the moments (8 + 8/N), ZeRO-2 also the gradients (4 + 12/N), ZeRO-3
everything (16/N). Each configuration trains a few steps in ``--world`` processes over gloo; just
before the last optimizer step every rank counts the bytes of every distinct tensor storage alive
in the process (parameters, gradients, optimizer state, the engine's flat buffers, the batch).
``bytes/param`` divides by the model's parameter count; ``vs model`` is the measured value over
the paper's. Extra copies an implementation keeps (DDP's gradient buckets, DeepSpeed's fp32
partition beside fp32 parameters) show up as a ratio above 1.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import compose, save, spawn_ranks, table  # noqa: E402
from framework.hooks import Hook  # noqa: E402

#: DeepSpeed's default communication buckets (5e8 elements) would dwarf a small model's states
BUCKETS = ("+strategy.extra.zero_optimization={reduce_bucket_size: 200000, allgather_bucket_size: 200000, "
           "stage3_prefetch_bucket_size: 200000, stage3_param_persistence_threshold: 0, stage3_max_live_parameters: 200000, "
           "stage3_max_reuse_distance: 0}")
CONFIGS = {"ddp": ["strategy=ddp"],
           **{f"zero{k}": ["strategy=deepspeed", f"strategy.zero_stage={k}", BUCKETS] for k in (1, 2, 3)}}
SHARED = ["experiment=demo", "optim.name=adam", "optim.lr=0.001", "model.widths=[64,128,256]", "model.norm=group",
          "data.batch_size=8", "data.eval_batch_size=128", "data.limit=256", "trainer.max_steps=3",
          "trainer.eval_every=0", "trainer.ckpt_every=0", "logger.tensorboard=false"]


def paper_bytes(kind: str, n: int) -> float:
    """Bytes per parameter per rank in the ZeRO paper's model (fp32 Adam, no mixed precision)."""
    return {"ddp": 16.0, "zero1": 8 + 8 / n, "zero2": 4 + 12 / n, "zero3": 16 / n}[kind]


def reachable_tensor_bytes(roots: list, named: dict[int, str] | None = None) -> dict[str, int]:
    """Bytes of every distinct tensor storage reachable from ``roots`` through attributes, lists,
    tuples and dicts (parameters' ``.grad`` and ZeRO-3's ``ds_tensor`` included): what the model,
    its wrapper and the optimizer hold, without the garbage collector's blind spot for tensors
    that live only in C++ (gradients, DDP's buckets). Grouped by where each storage was found:
    ``named`` (storage pointer -> label) first, else the nearest attribute name on the way to it
    (e.g. DeepSpeed's ``single_partition_of_fp32_groups``), so the gap to the model has names."""
    named = named or {}
    seen_obj: set[int] = set()
    storages: dict[int, tuple[int, str]] = {}
    stack = [(r, 0, type(r).__name__) for r in roots]
    while stack:
        obj, depth, label = stack.pop()
        if id(obj) in seen_obj or depth > 8:
            continue
        seen_obj.add(id(obj))
        if isinstance(obj, torch.Tensor):
            for t, lab in ((obj, label), (getattr(obj, "grad", None), "gradients"),
                           (getattr(obj, "ds_tensor", None), "ds_tensor (ZeRO-3 parameter partitions)")):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    st = t.untyped_storage()
                    if st.data_ptr():
                        size = max(storages.get(st.data_ptr(), (0, ""))[0], st.nbytes())
                        storages[st.data_ptr()] = (size, named.get(st.data_ptr(), lab))
            continue
        if isinstance(obj, dict):
            children = [(v, label) for v in obj.values()] + [(k, label) for k in obj if isinstance(k, torch.Tensor)]
        elif isinstance(obj, (list, tuple, set)):
            children = [(c, label) for c in obj]
        elif isinstance(obj, torch.nn.Module):
            children = [(c, "parameters and buffers") for c in (*obj.parameters(), *obj.buffers())]
            children += [(v, k) for k, v in vars(obj).items()]
        elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("torch", "deepspeed", "accelerate", "framework"):
            children = [(v, k) for k, v in vars(obj).items()]
        else:
            continue
        stack.extend((c, depth + 1, lab) for c, lab in children)
    out: dict[str, int] = {}
    for size, label in storages.values():
        out[label] = out.get(label, 0) + size
    return out


def known_storages(model: torch.nn.Module, optimizers: list) -> dict[int, str]:
    """Storage pointer -> category for what the ZeRO model counts (parameters, gradients, moments);
    a flat buffer that parameters are views of counts as parameters."""
    named = {t.untyped_storage().data_ptr(): "Adam moments" for opt in optimizers for t in moment_tensors(opt)}
    for p in model.parameters():
        if p.grad is not None:
            named[p.grad.untyped_storage().data_ptr()] = "gradients"
        if p.device.type != "meta" and p.untyped_storage().data_ptr():
            named[p.untyped_storage().data_ptr()] = "parameters"
    return {k: v for k, v in named.items() if k}


def moment_tensors(optimizer) -> list[torch.Tensor]:
    """The Adam moments: the state of the torch optimizer (inside DeepSpeed's wrapper)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return [t for state in inner.state.values() for k, t in state.items()
            if isinstance(t, torch.Tensor) and k in ("exp_avg", "exp_avg_sq")]


def moment_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for t in moment_tensors(optimizer))


class Probe(Hook):
    """Counts model-state bytes before the last optimizer step."""

    def __init__(self) -> None:
        self.bytes = self.moments = self.params = 0
        self.by_kind: dict[str, int] = {}

    def before_optimizer_step(self, trainer) -> None:
        if trainer.ctx.global_step == trainer.plan.total - 1:
            gc.collect()
            opts = list(trainer.ctx.optimizers.values())
            model = trainer.strategy.unwrap(trainer.model)
            self.by_kind = reachable_tensor_bytes([trainer.model, *opts, trainer.strategy], known_storages(model, opts))
            self.bytes = sum(self.by_kind.values())
            self.moments = sum(moment_bytes(o) for o in opts)
            self.params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def worker(rank: int, world: int, port: int, overrides: list[str], queue) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                       "CUDA_VISIBLE_DEVICES": ""})
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(1)
    try:
        from framework.run import train

        probe = Probe()
        run_dir = Path(tempfile.gettempdir()) / f"medley-zero-{port}"
        train(compose(*SHARED, *overrides, f"paths.run_dir={run_dir}"), hooks=[probe])
        queue.put((rank, "ok", {"bytes": probe.bytes, "params": probe.params, "moments": probe.moments,
                                "by_kind": probe.by_kind}))
    except BaseException:  # noqa: BLE001 - report to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        queue.close()
        queue.join_thread()
        from framework.strategies.process_group import exit_process

        exit_process(0)


def run(overrides: list[str], world: int) -> list[dict]:
    return spawn_ranks(worker, world, (overrides,), timeout=900)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated: ddp,zero1,zero2,zero3")
    ns = p.parse_args(argv)
    rows, failed, breakdown = [], {}, {}
    for kind, overrides in CONFIGS.items():
        if ns.only and kind not in ns.only.split(","):
            continue
        try:
            ranks = run(overrides, ns.world)
        except Exception as exc:  # noqa: BLE001 - one configuration's failure must not hide the others
            failed[kind] = str(exc)[-2000:]
            print(f"{kind}: failed\n{failed[kind]}", flush=True)
            continue
        n = ranks[0]["params"]
        per = [r["bytes"] / n for r in ranks]
        moments = max(r["moments"] for r in ranks) / n
        model = paper_bytes(kind, ns.world)
        model_moments = 8.0 if kind in ("ddp",) else 8.0 / ns.world
        rows.append([kind, n, max(r["bytes"] for r in ranks) / 2**20, max(per), model, max(per) / model,
                     moments, model_moments, moments / model_moments])
        worst = max(ranks, key=lambda r: r["bytes"])
        breakdown[kind] = {k: v / n for k, v in sorted(worst["by_kind"].items(), key=lambda kv: -kv[1])}
        print(f"{kind}: {max(per):.2f} B/param per rank (model {model:.2f}); by where it is held: "
              + ", ".join(f"{k} {v:.2f}" for k, v in breakdown[kind].items()), flush=True)
    headers = ["strategy", "params", "MiB per rank (max)", "bytes/param", "ZeRO model bytes/param", "vs model",
               "moment bytes/param", "model moments", "moments vs model"]
    print(table(headers, rows))
    result = {"world": ns.world, "headers": headers, "rows": rows, "failed": failed, "breakdown": breakdown}
    save("zero_memory", result)
    return result


if __name__ == "__main__":
    main()
