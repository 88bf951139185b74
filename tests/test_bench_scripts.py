"""The benchmark plumbing: RESULTS.md is written from the benchmarks' own numbers (targets judged
from them, failures shown), the timing helper pairs rounds, and the GPU check parses."""

from __future__ import annotations

import subprocess

from benchmarks import run_all
from benchmarks._common import REPO, interleaved, ratio


def _result(headers, rows, **extra):
    return {"headers": headers, "rows": rows, **extra}


def test_results_md_holds_the_tables_and_judges_targets_from_the_numbers(tmp_path):
    results = {
        "overhead": _result(["data", "medley ms/step", "hand ms/step", "ratio", "overhead ms/step"],
                            [["memory", 10.1, 10.0, 1.01, 0.1], ["shards", 12.0, 10.0, 1.2, 2.0]]),
        "ddp_overhead": _result(["ranks", "medley", "raw", "ratio", "rank 1"], [[2, 5.0, 5.0, 1.0, 1.0]]),
        "method_cost": _result(["method", "baseline", "settings", "ms", "bms", "step ratio", "peak", "bpeak", "mem"],
                               [["pcgrad", "equal_weight", "", 2.0, 1.0, 2.0, 3.0, 1.5, 2.0]],
                               failed={"cdt": "ValueError: no faces"}),
    }
    logs = {name: (True, "", 1.0) for name in results}
    logs["zero_memory"] = (False, "Traceback\nRuntimeError: rank 1 failed", 3.0)
    path = run_all.write(results, logs, 60.0, False, tmp_path / "RESULTS.md")
    text = path.read_text()
    assert "| memory | 10.1 | 10 | 1.01 | 0.1 |" in text
    assert "≤ 1.02: yes (1.010 ≤ 1.02)" in text and "≤ 1.05: **no** (1.200 > 1.05)" in text
    assert "RuntimeError: rank 1 failed" in text  # a failed benchmark shows its output, not old numbers
    assert "not measured: cdt: ValueError: no faces" in text
    for name in ("overhead.png", "method_step.png", "method_memory.png"):
        assert (tmp_path / "img" / name).read_bytes()[:4] == b"\x89PNG"


def test_interleaved_drops_the_warm_up_round_and_pairs_rounds():
    calls = []
    values = iter([100.0, 100.0, 2.0, 1.0, 4.0, 2.0, 6.0, 3.0])

    def arm(name):
        def run():
            calls.append(name)
            return next(values)
        return run

    out = interleaved({"a": arm("a"), "b": arm("b")}, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order alternates per round
    assert out == {"a": [1.0, 4.0, 3.0], "b": [2.0, 2.0, 6.0]}
    assert ratio(out, "a", "b") == 0.5


def test_gpu_check_script_parses():
    out = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_dispatched_ops_counts_each_operator_a_step_runs():
    import torch

    from benchmarks.method_cost import dispatched_ops

    x = torch.ones(4, requires_grad=True)
    assert dispatched_ops(lambda: None) == 0
    one = dispatched_ops(lambda: x.detach().add(1))
    two = dispatched_ops(lambda: x.detach().add(1).mul(2))
    assert two == one + 1
    assert dispatched_ops(lambda: (x * 2).sum().backward()) > dispatched_ops(lambda: (x * 2).sum())


def test_zero_memory_names_parameters_gradients_and_moments_and_counts_each_storage_once():
    import torch

    from benchmarks.zero_memory import known_storages, reachable_tensor_bytes

    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 8)).sum().backward()
    opt.step()
    model.bucket = torch.zeros(10)  # e.g. a wrapper's communication buffer, held by attribute name
    model.views = [model.bucket[:5], model.weight.grad[0]]  # views: their storages are counted already
    held = reachable_tensor_bytes([model, opt], known_storages(model, [opt]))
    n = sum(p.numel() for p in model.parameters())
    steps = 4 * len(opt.state)  # Adam's float32 step counter per parameter, under its dict's name
    assert held == {"parameters": 4 * n, "gradients": 4 * n, "Adam moments": 8 * n, "bucket": 40, "state": steps}
