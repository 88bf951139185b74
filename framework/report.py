"""``medley report RUN_DIR``: plots of a run as SVG files in ``RUN_DIR/report/``.

From the run's files: training curves (``metrics.jsonl``'s ``train/*``), evaluation curves, and
one heat map per metric of the phase × evaluation-set matrix (``eval_matrix.json``). Then, if
the algorithm defines ``report(model, ctx, out_dir)``, its own figures from the last checkpoint
(e.g. DYMU's accuracy–FLOPs trade-off and derived trees).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from framework.plots import heatmap_svg, xy_svg

SKIP = ("train/samples_per_s", "train/skipped_steps")


def curves(run_dir: Path, out: Path) -> list[Path]:
    """Training and evaluation curves over steps."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    train: dict[str, list] = {}
    evals: dict[str, list] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, value in row.items():
            if key in ("step", "time") or key in SKIP or key.startswith(("lr/", "phase/")):
                continue
            if isinstance(value, (int, float)):
                (train if key.startswith("train/") else evals).setdefault(key, []).append((row["step"], float(value)))
    written = []
    if train:
        written.append(out / "train.svg")
        written[-1].write_text(xy_svg(train, f"training ({run_dir.name})", "step", "value"))
    multi = {k: v for k, v in evals.items() if len(v) > 1}
    if multi:
        written.append(out / "eval.svg")
        written[-1].write_text(xy_svg(multi, f"evaluation ({run_dir.name})", "step", "value"))
    return written


def matrix(run_dir: Path, out: Path) -> list[Path]:
    """One heat map per metric of ``eval_matrix.json`` (rows: phases, columns: evaluation sets)."""
    path = run_dir / "eval_matrix.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    phases, sets, rows = doc["phases"], doc["sets"], doc["matrix"]
    names = sorted({m for row in rows.values() for cell in row.values() for m in cell})
    written = []
    for name in names:
        values = [[rows.get(p, {}).get(s, {}).get(name) for s in sets] for p in phases]
        dest = out / f"matrix_{name.replace('/', '_')}.svg"
        dest.write_text(heatmap_svg(phases, sets, values, f"{name}: phase (rows) × evaluation set (columns)"))
        written.append(dest)
    return written


def write_report(target: str, out: Path | None = None, overrides: list[str] | None = None,
                 algorithm_figures: bool = True) -> list[Path]:
    from framework.evaluate import loaded_checkpoint, locate

    run_dir, _ = locate(target)
    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = curves(run_dir, out) + matrix(run_dir, out)
    if algorithm_figures:
        with loaded_checkpoint(target, overrides) as (trainer, _):
            written += list(trainer.algorithm.report(trainer.model, trainer.ctx, out) or [])
    return written


def report_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="medley report", description=__doc__)
    parser.add_argument("target", help="run directory (newest checkpoint) or checkpoint file")
    parser.add_argument("--out", help="output directory (default: <run_dir>/report)")
    parser.add_argument("--no-algorithm", action="store_true", help="only the run's files; load no checkpoint")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.eval_batch_size=256")
    ns = parser.parse_intermixed_args(args)
    try:
        written = write_report(ns.target, Path(ns.out) if ns.out else None, ns.overrides, not ns.no_algorithm)
    except FileNotFoundError as exc:
        sys.exit(f"medley report: {exc}")
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("medley report: nothing to plot (no metrics.jsonl, eval_matrix.json or algorithm figures)")
