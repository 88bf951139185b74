"""``make bench``: run the cost benchmarks and write ``benchmarks/RESULTS.md`` with their tables,
plots under ``benchmarks/img/`` and the machine they ran on.

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python benchmarks/run_all.py [--quick] [--skip ddp,zero]

Every benchmark runs in its own process (one thread; the distributed ones start their own ranks)
and leaves its numbers in ``benchmarks/results/<name>.json``; this script only collects them.
A benchmark that fails is reported as failed in RESULTS.md, with the end of its output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO, machine, table  # noqa: E402

BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
IMG = BENCH / "img"
SECONDS = RESULTS / "seconds.json"  # how long each benchmark's last run took

#: name -> (script arguments, quick arguments)
SUITE = {
    "overhead": (["overhead.py", "--steps", "60", "--warmup", "10", "--rounds", "9"], ["overhead.py", "--quick"]),
    "overhead_tiny": (["overhead.py", "--tiny", "--no-shards", "--steps", "300", "--warmup", "30", "--rounds", "7"],
                      ["overhead.py", "--tiny", "--no-shards", "--steps", "60", "--warmup", "10", "--rounds", "2"]),
    "ddp_overhead": (["ddp_overhead.py", "--steps", "30", "--warmup", "6", "--rounds", "2"],
                     ["ddp_overhead.py", "--steps", "12", "--warmup", "3", "--rounds", "1"]),
    "zero_memory": (["zero_memory.py"], ["zero_memory.py"]),
    "method_cost": (["method_cost.py", "--steps", "2", "--rounds", "2"],
                    ["method_cost.py", "--steps", "2", "--rounds", "1", "--only", "gradsplit,pcgrad"]),
    "checkpoint_stall": (["checkpoint_stall.py", "--steps", "150", "--every", "50"],
                         ["checkpoint_stall.py", "--steps", "40", "--every", "20"]),
    "data_throughput": (["data_throughput.py", "--batches", "60", "--repeats", "2", "--steps", "30"],
                        ["data_throughput.py", "--batches", "20", "--repeats", "1", "--steps", "10"]),
}


def run(name: str, args: list[str], env: dict) -> tuple[bool, str, float]:
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    (RESULTS / f"{name}.log").write_text(out)
    return proc.returncode == 0, out, time.time() - t0


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(value: float, target: float) -> str:
    return f"yes ({value:.3f} ≤ {target})" if value <= target else f"**no** ({value:.3f} > {target})"


def plots(results: dict[str, dict], img: Path = IMG) -> list[str]:
    from framework.plots import bars_png

    img.mkdir(parents=True, exist_ok=True)
    lines = []
    ratios = {}
    for name, label in (("overhead", "demo"), ("overhead_tiny", "tiny")):
        r = results.get(name)
        if r:
            for row in r["rows"]:
                ratios[f"{label}/{row[0]}"] = row[3]
    if results.get("ddp_overhead"):
        ratios["ddp x2"] = results["ddp_overhead"]["rows"][0][3]
    if ratios:
        bars_png({k: v - 1 for k, v in ratios.items()}, img / "overhead.png",
                 "Medley step time over the hand-written loop, minus 1", "ratio − 1")
        lines.append("![overhead](img/overhead.png)")
    mc = results.get("method_cost")
    if mc and mc["rows"]:
        bars_png({r[0]: r[5] for r in mc["rows"]}, img / "method_step.png", "step time / baseline", "ratio")
        bars_png({r[0]: r[8] for r in mc["rows"]}, img / "method_memory.png", "peak step memory / baseline", "ratio")
        lines += ["![method step time](img/method_step.png)", "![method memory](img/method_memory.png)"]
    zm = results.get("zero_memory")
    if zm and zm["rows"]:
        bars_png({r[0]: r[3] for r in zm["rows"]}, img / "zero_memory.png", "model-state bytes per parameter per rank",
                 "bytes/param")
        lines.append("![zero memory](img/zero_memory.png)")
    return lines


def write(results: dict[str, dict], logs: dict[str, tuple[bool, str, float]], total: float, quick: bool,
          path: Path = BENCH / "RESULTS.md") -> Path:
    m = machine()
    md = ["# Benchmark results", "",
          f"Written by `make bench` (`benchmarks/run_all.py{' --quick' if quick else ''}`) on "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the benchmarks' last runs took "
          f"{sum(s for _, _, s in logs.values()) / 60:.1f} min in all (this invocation {total / 60:.1f} min).",
          f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, "
          f"GPU: {m['gpu'] or 'none'}. The machine is shared with other jobs (load averages per section): "
          "every figure below is a ratio of arms run in turn in one process (warm-up dropped, median), "
          "absolute times are only context. One thread per process (`OMP_NUM_THREADS=1`).", ""]

    def section(title: str, name: str, intro: str, extra=None) -> None:
        md.extend([f"## {title}", "", intro, ""])
        r = results.get(name)
        ok, out, secs = logs.get(name, (False, "not run", 0.0))
        if r is None or not ok:
            tail = "\n".join(out.strip().splitlines()[-15:])
            md.extend(["**Failed or not run.** End of its output:", "", "```", tail, "```", ""])
            return
        load_avg = r.get("machine", {}).get("load_avg")
        md.extend([table(r["headers"], r["rows"]), "", f"({secs:.0f} s; load average when it ended: {load_avg})", ""])
        if extra:
            md.extend(extra(r))

    def overhead_targets(r):
        rows = {row[0]: row for row in r["rows"]}
        out = []
        if "memory" in rows:
            out.append(f"- from memory, step-time ratio target ≤ 1.02: {verdict(rows['memory'][3], 1.02)}")
        if "shards" in rows:
            out.append(f"- from shards, step-time ratio target ≤ 1.05: {verdict(rows['shards'][3], 1.05)}")
        return out + [""]

    section("Overhead against a hand-written loop (demo model)", "overhead",
            "`benchmarks/overhead.py`: `Trainer.fit` vs a plain PyTorch loop with the same model, seed, "
            "optimizer, schedule and batches; `memory` feeds both the same in-memory batches (the loop "
            "alone), `shards` reads the prepared shards (Medley's loader vs plain `webdataset` + "
            "`DataLoader`). Parameters after n steps from memory are bitwise equal "
            "(`tests/test_overhead_parity.py`).", overhead_targets)
    section("Overhead on a tiny model", "overhead_tiny",
            "Widths [4], batch 8: the model costs almost nothing, so the difference is the per-step "
            "cost of the loop itself.",
            lambda r: [f"- absolute overhead target ≤ 0.5 ms/step: "
                       f"{verdict(r['rows'][0][4], 0.5)}", ""])
    section("DDP overhead (2 processes, gloo)", "ddp_overhead",
            "`benchmarks/ddp_overhead.py`: `strategy=ddp` vs a hand-written `DistributedDataParallel` "
            "loop in the same two processes and process group.",
            lambda r: [f"- target ≤ 1.05: {verdict(r['rows'][0][3], 1.05)}", ""])
    def zero_breakdown(r):
        out = [f"- {row[0]}: moments {verdict(row[8], 1.05)} of the model; "
               f"all model states {row[5]:.3f}× the model" for row in r["rows"]]
        parts = r.get("breakdown") or {}
        if parts:
            kinds = list(parts)
            cats = sorted({c for v in parts.values() for c in v}, key=lambda c: -max(v.get(c, 0) for v in parts.values()))
            out += ["", "Where the bytes are held (bytes/param on the rank holding most; a category is the "
                    "parameters, gradients and moments the model counts, else the attribute that holds the tensor):", "",
                    table(["held as", *kinds], [[c, *(parts[k].get(c, 0.0) for k in kinds)] for c in cats]), "",
                    "In DeepSpeed's own names: `param_groups` (ZeRO-1/2) and `state` (ZeRO-3) hold its fp32 "
                    "partition of the parameters (4/N B/param), kept even when the model is already fp32; "
                    "`buffer` is one communication bucket (200k elements here, a fixed size); ZeRO-2's "
                    "`all_grad_tensors` are the full gradients, held until the end of the backward pass "
                    "(DeepSpeed builds a compact gradient partition only under mixed precision). These "
                    "are the whole gap to the model; the moments match it exactly."]
        return out + [""]

    section("ZeRO model-state memory per rank (2 processes)", "zero_memory",
            "`benchmarks/zero_memory.py`: bytes of every tensor reachable from the model, its wrapper, "
            "the optimizer and the strategy just before the last optimizer step, per parameter, "
            "against the ZeRO model for fp32 Adam (DDP 16, ZeRO-1 8 + 8/N, ZeRO-2 4 + 12/N, "
            "ZeRO-3 16/N B/param); the Adam moments alone against 8 (DDP) or 8/N (ZeRO).",
            zero_breakdown)
    section("Method cost", "method_cost",
            "`benchmarks/method_cost.py`: step time and peak step memory of every algorithm plugin "
            "against a baseline on the same backbone, data and batch (multi-phase methods in their "
            "first phase), and the operators one step dispatches: on a GPU each costs a few "
            "microseconds of host time whatever its size, so on small models the operator count, not "
            "the FLOPs, sets the step-time ratio there.", lambda r: [f"- not measured: {k}: {v}" for k, v in r.get("failed", {}).items()] + [""])
    section("Checkpoint stall", "checkpoint_stall",
            "`benchmarks/checkpoint_stall.py`: wall time of a periodic checkpoint as a share of the "
            "checkpoint interval (target ≤ 2 %).",
            lambda r: [f"- at the measured interval: {verdict(r['rows'][0][3], 0.02)}", ""])
    md.extend(["## Data throughput", "", "`benchmarks/data_throughput.py` (its own output):", ""])
    ok, out, secs = logs.get("data_throughput", (False, "not run", 0.0))
    lines = [ln for ln in out.splitlines() if not ln.startswith(("INFO", "[", "WARNING")) and ln.strip()]
    md.extend(["```", *(lines[-12:] if ok else ["failed:", *lines[-15:]]), "```", f"({secs:.0f} s)", ""])
    md.extend(["## What the step path does", "",
               "Per optimizer step the trainer waits for the device once per micro-batch: the finite "
               "check (all-reduced across ranks, so every rank skips the same step) and the loss values "
               "for logging travel in one copy (one process on CPU reads the values directly); values passed to `ctx.log` (e.g. the gradient norm) stay "
               "on the device until the log line (`trainer.log_every`); samples are counted on the host "
               "batch; config values are read once per run; `model.train()` runs only when a module is "
               "not in training mode (the module list is taken once per phase). Logging, metric reductions, checkpoints and TensorBoard happen only "
               "on their own intervals. Profile of the demo step from memory (cProfile, 60 steps): "
               "backward, convolutions, batch norm and ReLU are 93 % of the step time; the trainer's own "
               "Python code (its own time, before the changes above) was 0.23 ms per step. On the tiny "
               "model the finite check and the training-mode check were 48 µs and 29 µs of it; now 4 µs and "
               "about 2 µs.", ""])
    md.extend(["## GPU", "", "Not measured by `make bench`. `benchmarks/gpu_check.sh` (≤ 8 min, one CUDA GPU, no "
               "network) prints one table: bf16 step time, samples/s and peak memory of the default "
               "experiment, single-GPU vs DDP-on-1-GPU wrapper overhead, DeepSpeed ZeRO-2 on 1 GPU, and "
               "GradSplit's step-time ratio to equal-weight.", ""])
    figs = plots(results, path.parent / "img")
    if figs:
        md.extend(["## Plots", "", *figs, ""])
    path.write_text("\n".join(md))
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke settings (a few minutes)")
    p.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    p.add_argument("--only", default="", help="comma-separated benchmark names to run")
    p.add_argument("--collect", action="store_true", help="run nothing: rewrite RESULTS.md from results/")
    ns = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
           "PYTHONPATH": str(REPO)}
    logs: dict[str, tuple[bool, str, float]] = {}
    t0 = time.time()
    for name, (full, quick) in SUITE.items():
        if ns.collect or name in ns.skip.split(",") or (ns.only and name not in ns.only.split(",")):
            log = RESULTS / f"{name}.log"
            if log.exists() and (load(name) is not None or name == "data_throughput"):
                seconds = json.loads(SECONDS.read_text()) if SECONDS.exists() else {}
                logs[name] = (True, log.read_text(), seconds.get(name, 0.0))
            continue
        (RESULTS / f"{name}.json").unlink(missing_ok=True)
        print(f"== {name}", flush=True)
        logs[name] = run(name, quick if ns.quick else full, env)
        seconds = json.loads(SECONDS.read_text()) if SECONDS.exists() else {}
        SECONDS.write_text(json.dumps({**seconds, name: round(logs[name][2], 1)}, indent=1))  # for --collect
        print(f"   {'ok' if logs[name][0] else 'FAILED'} in {logs[name][2]:.0f} s", flush=True)
    results = {name: r for name in SUITE if (r := load(name)) is not None}
    path = write(results, logs, time.time() - t0, ns.quick)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
