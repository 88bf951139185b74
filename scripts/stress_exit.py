"""Run each multi-process launch path N times in a row and count clean exits.

A clean exit: the launcher returns 0, ``summary.json`` is written and no rank printed
``terminate called`` (a native thread aborting the process after the run had finished).

    .venv/bin/python scripts/stress_exit.py --runs 30 torchrun accelerate deepspeed ray

Every run is a few steps of a tiny model (``tests/helpers/dist_launch.SMALL``) on prepared data
under ``--data`` (``$MEDLEY_DATA`` or ``~/.cache/medley/data``; prepared on the first run).
Output of every unclean run is kept under ``--logs``. Exit status 1 when any run was unclean.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import dist_launch as L  # noqa: E402  (the tests' launch commands)
from tests.helpers.distributed import free_port  # noqa: E402

#: signs of a rank that died after training had finished
ABORT_MARKS = ("terminate called", "SIGABRT", "Signal 6")


def command(path: str, run_dir: Path, scratch: Path) -> list[str]:
    args = [*L.SMALL, f"paths.run_dir={run_dir}"]
    if path == "torchrun":
        return L.torchrun(2, "-m", "launchers.train", "strategy=ddp", *args)
    if path == "accelerate":
        return L.accelerate("cpu_2proc.yaml", "--main_process_port", str(free_port()), "-m", "launchers.train",
                            "strategy=ddp", *args)
    if path == "deepspeed":
        return L.deepspeed(2, "--module", "launchers.train", "strategy=deepspeed", "strategy.zero_stage=3", *args)
    if path == "ray":
        return [sys.executable, "-m", "launchers.ray_job", "--num-workers", "2", "--num-cpus", "2",
                "--object-store-memory", str(200 * 2**20), "--temp-dir", str(scratch / "ray"), *args]
    raise SystemExit(f"unknown launch path '{path}' (torchrun, accelerate, deepspeed, ray)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", choices=("torchrun", "accelerate", "deepspeed", "ray"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("MEDLEY_DATA", "~/.cache/medley/data")).expanduser())
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "medley-stress-exit")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run")
    args = parser.parse_args()

    totals = {}
    for path in args.paths:
        clean, walls = 0, []
        for i in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(prefix=f"medley-stress-{path}-") as tmp:
                scratch = Path(tmp)
                run_dir = scratch / "run"
                cmd = [*command(path, run_dir, scratch), f"paths.data_root={args.data}"]
                t0 = time.monotonic()
                try:
                    proc = L.run(cmd, args.data, timeout=args.timeout)
                    out, rc = proc.stdout, proc.returncode
                except AssertionError as exc:  # timed out
                    out, rc = str(exc), "timeout"
                walls.append(time.monotonic() - t0)
                ok = rc == 0 and (run_dir / "summary.json").exists() and not any(m in out for m in ABORT_MARKS)
                clean += ok
                if not ok:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    (args.logs / f"{path}-{i:03d}.log").write_text(out)
                print(f"{path} run {i}/{args.runs}: {'clean' if ok else f'UNCLEAN (exit {rc})'} "
                      f"{walls[-1]:.1f} s", flush=True)
                if path == "ray":
                    shutil.rmtree(scratch / "ray", ignore_errors=True)
        totals[path] = (clean, sum(walls) / len(walls))
    print()
    for path, (clean, wall) in totals.items():
        print(f"{path} {clean}/{args.runs} clean (mean {wall:.1f} s per run)")
    return 0 if all(c == args.runs for c, _ in totals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
