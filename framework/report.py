"""``medley report RUN_DIR [RUN_DIR ...]``: PNG plots of runs and a markdown table comparing them.

From each run's files: one training curve per loss term and logged value (``metrics.jsonl``'s
``train/*``), evaluation curves (per-task curves on one figure where a split has several
tasks), one heat map per metric of the phase × evaluation-set matrix (``eval_matrix.json``),
ROC curves of any ``roc*.json`` the run saved (face verification). Then, if the algorithm
defines ``report(model, ctx, out_dir)``, its own figures from the last checkpoint (e.g. DYMU's
accuracy–FLOPs trade-off and derived trees). ``report.md`` holds a table of the runs' final
metrics and, for multi-task runs, Δm against a baseline run (the first one, or ``--baseline``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from framework.plots import bars_png, heatmap_png, xy_png

SKIP = ("train/samples_per_s", "train/skipped_steps")
LOWER_IS_BETTER = re.compile(r"loss|err|mflops|flops|params|nme|eer", re.I)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")


def read_series(run_dir: Path) -> tuple[dict[str, list], dict[str, list]]:
    """``(train, evals)``: ``{key: [(step, value), ...]}`` from ``metrics.jsonl`` in file order
    (``lr/``, ``phase/`` and bookkeeping keys left out; unreadable lines skipped)."""
    path = run_dir / "metrics.jsonl"
    train: dict[str, list] = {}
    evals: dict[str, list] = {}
    if not path.exists():
        return train, evals
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, value in row.items():
            if key in ("step", "time") or key in SKIP or key.startswith(("lr/", "phase/")):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                (train if key.startswith("train/") else evals).setdefault(key, []).append((row["step"], float(value)))
    return train, evals


def curves(run_dir: Path, out: Path) -> list[Path]:
    """One PNG per training series; evaluation curves grouped by (split, metric) over tasks."""
    train, evals = read_series(run_dir)
    written = []
    for key, pts in train.items():
        written.append(xy_png({key: pts}, out / f"train_{_slug(key[6:])}.png", f"{key} ({run_dir.name})",
                              "step", key[6:]))
    groups: dict[tuple[str, str], dict[str, list]] = {}
    for key, pts in evals.items():
        if len(pts) < 2:
            continue  # only the final evaluation: a value, not a curve (it is in report.md)
        parts = key.split("/")
        split, task, metric = (parts[0], "/".join(parts[1:-1]), parts[-1]) if len(parts) >= 3 else (parts[0], "", parts[-1])
        groups.setdefault((split, metric), {})[task or key] = pts
    for (split, metric), series in groups.items():
        if len(series) > 1:
            name, title = f"tasks_{_slug(split)}_{_slug(metric)}.png", f"{split}: {metric} per task ({run_dir.name})"
        else:
            task = next(iter(series))
            name, title = f"eval_{_slug(split)}_{_slug(task)}_{_slug(metric)}.png", f"{split}/{task}/{metric} ({run_dir.name})"
        written.append(xy_png(series, out / name, title, "step", metric))
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
        written.append(heatmap_png(phases, sets, values, out / f"matrix_{_slug(name.replace('/', '_'))}.png",
                                   f"{name}: phase (rows) × evaluation set (columns)"))
    return written


def roc(run_dir: Path, out: Path) -> list[Path]:
    """ROC curves (TAR against log FAR) of every ``roc*.json`` with ``far`` and ``tar`` in the run."""
    series = {}
    for path in sorted(run_dir.rglob("*roc*.json")):
        if out in path.parents:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and "far" in doc and "tar" in doc:
            series[str(path.relative_to(run_dir).with_suffix(""))] = [
                (f, t) for f, t in zip(doc["far"], doc["tar"]) if f > 0]
    if not series:
        return []
    return [xy_png(series, out / "roc.png", f"ROC ({run_dir.name})", "false accept rate", "true accept rate",
                   logx=True)]


# ------------------------------------------------------------------------------ comparing
def summary_of(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def delta_m(metrics: dict[str, float], baseline: dict[str, float], split: str = "test") -> float | None:
    """Δm (%): the mean over ``split/<task>/<metric>`` entries both runs have of the relative change
    against the baseline, sign-flipped where lower is better (losses, errors, FLOPs)."""
    terms = []
    for key, base in baseline.items():
        parts = key.split("/")
        if len(parts) < 3 or parts[0] != split or key not in metrics or not base or not math.isfinite(base):
            continue
        sign = -1.0 if LOWER_IS_BETTER.search(parts[-1]) else 1.0
        terms.append(sign * (metrics[key] - base) / abs(base))
    return 100.0 * sum(terms) / len(terms) if terms else None


def labels_of(run_dirs: list[Path]) -> list[str]:
    """Short unique names: the run's name directory and its timestamp where names repeat."""
    names = [f"{d.parent.name}/{d.name}" if (d / "summary.json").exists() and d.parent.name else d.name
             for d in run_dirs]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def comparison(run_dirs: list[Path], labels: list[str], out: Path, baseline: int = 0) -> tuple[str, list[Path]]:
    """The markdown table of final metrics (and Δm against run ``baseline``) and, with several
    runs, the training loss of each on one figure and Δm as bars."""
    summaries = [summary_of(d) for d in run_dirs]
    finals = [s.get("final_metrics", {}) for s in summaries]
    keys = sorted({k for f in finals for k in f})
    base = finals[baseline]
    headers = ["run", "algorithm", "steps", "wall_s", *keys]
    multi = any(len({k.split("/")[1] for k in f if k.count("/") >= 2}) > 1 for f in finals)
    if multi and len(run_dirs) > 1:
        headers.append(f"Δm vs {labels[baseline]} (%)")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    deltas = {}
    for label, s, f in zip(labels, summaries, finals):
        cells = [label, s.get("algorithm", ""), s.get("steps", ""), s.get("wall_s", "")]
        cells += [f"{f[k]:.4f}" if k in f else "" for k in keys]
        if multi and len(run_dirs) > 1:
            d = delta_m(f, base)
            deltas[label] = d
            cells.append("" if d is None else f"{d:+.2f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    written = []
    if len(run_dirs) > 1:
        series = {}
        for label, d in zip(labels, run_dirs):
            pts = read_series(d)[0].get("train/loss")
            if pts:
                series[label] = pts
        if series:
            written.append(xy_png(series, out / "compare_train_loss.png", "training loss", "step", "train/loss"))
        finite = {k: v for k, v in deltas.items() if v is not None}
        if finite:
            written.append(bars_png(finite, out / "delta_m.png", f"Δm against {labels[baseline]} (test)", "Δm (%)"))
    return "\n".join(lines), written


def write_report(target: str, out: Path | None = None, overrides: list[str] | None = None,
                 algorithm_figures: bool = True) -> list[Path]:
    """The figures of one run (directory or checkpoint) and its ``report.md``."""
    return write_reports([target], out, overrides, algorithm_figures)


def write_reports(targets: list[str], out: Path | None = None, overrides: list[str] | None = None,
                  algorithm_figures: bool = True, baseline: str | None = None) -> list[Path]:
    """Figures of every run (in ``out/<run label>/`` when there are several) and ``out/report.md``."""
    from framework.evaluate import loaded_checkpoint

    if not targets:
        raise FileNotFoundError("no run directory given")
    run_dirs = [_run_dir(t, algorithm_figures) for t in targets]
    out = out or (run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    labels = labels_of(run_dirs)
    written: list[Path] = []
    for target, run_dir, label in zip(targets, run_dirs, labels):
        dest = out if len(run_dirs) == 1 else out / _slug(label)
        dest.mkdir(parents=True, exist_ok=True)
        written += curves(run_dir, dest) + matrix(run_dir, dest) + roc(run_dir, dest)
        if algorithm_figures:
            with loaded_checkpoint(target, overrides) as (trainer, _):
                written += list(trainer.algorithm.report(trainer.model, trainer.ctx, dest) or [])
    index = 0
    if baseline is not None:
        wanted = _run_dir(baseline, False)
        if wanted not in run_dirs:
            raise FileNotFoundError(f"--baseline {baseline} is not one of the reported runs")
        index = run_dirs.index(wanted)
    table, figures = comparison(run_dirs, labels, out, index)
    written += figures
    lines = ["# Runs", "", table, "", "## Figures", ""]
    lines += [f"- [{p.relative_to(out)}]({p.relative_to(out)})" for p in written if out in p.parents]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return [*written, out / "report.md"]


def _run_dir(target: str, need_checkpoint: bool) -> Path:
    """The run directory of a target; without algorithm figures a run needs no checkpoint."""
    from framework.evaluate import locate

    try:
        return locate(target)[0]
    except FileNotFoundError:
        path = Path(target).expanduser().resolve()
        if need_checkpoint or not (path / "metrics.jsonl").exists():
            raise
        return path


def report_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="medley report", description=__doc__)
    parser.add_argument("targets", nargs="+", help="run directories (newest checkpoint) or checkpoint files")
    parser.add_argument("--out", help="output directory (default: <run_dir>/report for one run, ./report for several)")
    parser.add_argument("--baseline", help="the run Δm is measured against (default: the first)")
    parser.add_argument("--no-algorithm", action="store_true", help="only the run's files; load no checkpoint")
    ns, overrides = parser.parse_known_args(args)
    targets = [t for t in ns.targets if "=" not in t]
    overrides = [t for t in ns.targets if "=" in t] + overrides
    try:
        written = write_reports(targets, Path(ns.out) if ns.out else None, overrides, not ns.no_algorithm,
                                ns.baseline)
    except FileNotFoundError as exc:
        sys.exit(f"medley report: {exc}")
    for path in written:
        print(f"wrote {path}")
