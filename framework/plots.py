"""Plots of a run: PNG files through matplotlib (Agg, no display), and the same shapes as
self-contained SVG text for code that must not import a plotting library.

Three shapes cover what a run reports: lines (curves over steps, ROC curves), points (a
trade-off, e.g. accuracy against FLOPs) and a heat map (the phase × evaluation-set matrix);
bars compare runs.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 400, 70, 170, 40, 50


def _frame(title: str, xlabel: str, ylabel: str, xr: tuple, yr: tuple) -> list[str]:
    (x0, x1), (y0, y1) = xr, yr
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
            f'<rect width="{W}" height="{H}" fill="white"/>',
            f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
            f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="black"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="black"/>',
            f'<text x="{LEFT}" y="{H - BOTTOM + 15}" text-anchor="middle">{x0:.4g}</text>',
            f'<text x="{W - RIGHT}" y="{H - BOTTOM + 15}" text-anchor="middle">{x1:.4g}</text>',
            f'<text x="{LEFT - 5}" y="{H - BOTTOM}" text-anchor="end">{y0:.4g}</text>',
            f'<text x="{LEFT - 5}" y="{TOP + 4}" text-anchor="end">{y1:.4g}</text>',
            f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">{escape(xlabel)}</text>',
            f'<text x="15" y="{H / 2}" transform="rotate(-90 15 {H / 2})" text-anchor="middle">{escape(ylabel)}</text>']


def _scale(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(finite), max(finite)
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def xy_svg(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
           lines: bool = True) -> str:
    """Named series of (x, y) points, joined by lines or drawn as dots, with a legend."""
    xr = _scale([x for pts in series.values() for x, _ in pts])
    yr = _scale([y for pts in series.values() for _, y in pts])
    sx = lambda x: LEFT + (x - xr[0]) / (xr[1] - xr[0]) * (W - LEFT - RIGHT)
    sy = lambda y: H - BOTTOM - (y - yr[0]) / (yr[1] - yr[0]) * (H - TOP - BOTTOM)
    parts = _frame(title, xlabel, ylabel, xr, yr)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        if lines and len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        else:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}" fill-opacity="0.7"/>'
                      for x, y in pts]
        parts.append(f'<rect x="{W - RIGHT + 10}" y="{TOP + 16 * i}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{W - RIGHT + 25}" y="{TOP + 9 + 16 * i}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap_svg(rows: list[str], cols: list[str], values: list[list[float | None]], title: str) -> str:
    """A table of cells shaded by value (white = low, blue = high), each labelled; None = empty."""
    cell_w, cell_h, left, top = 90, 28, 140, 60
    finite = [v for row in values for v in row if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    width, height = left + cell_w * len(cols) + 20, top + cell_h * len(rows) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for j, col in enumerate(cols):
        parts.append(f'<text x="{left + cell_w * (j + 0.5)}" y="{top - 8}" text-anchor="middle">{escape(col)}</text>')
    for i, row in enumerate(rows):
        y = top + cell_h * i
        parts.append(f'<text x="{left - 8}" y="{y + cell_h / 2 + 4}" text-anchor="end">{escape(row)}</text>')
        for j, v in enumerate(values[i]):
            x = left + cell_w * j
            if v is None or not math.isfinite(v):
                parts.append(f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="#eee" stroke="white"/>')
                continue
            t = (v - lo) / (hi - lo) if hi > lo else 0.5
            shade = f"rgb({int(255 - 200 * t)},{int(255 - 130 * t)},255)"
            parts.append(f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{shade}" stroke="white"/>'
                         f'<text x="{x + cell_w / 2}" y="{y + cell_h / 2 + 4}" text-anchor="middle">{v:.3f}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------- PNG
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def xy_png(series: dict[str, list[tuple[float, float]]], path, title: str, xlabel: str, ylabel: str,
           lines: bool = True, logx: bool = False):
    """Named series of (x, y) points as lines (or dots) with a legend; non-finite points dropped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for name, pts in series.items():
        pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        if lines and len(pts) > 1:
            ax.plot(xs, ys, label=name, linewidth=1.5)
        else:
            ax.scatter(xs, ys, label=name, s=18, alpha=0.8)
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def heatmap_png(rows: list[str], cols: list[str], values: list[list[float | None]], path, title: str):
    """Cells shaded by value and labelled; None or non-finite = empty (grey)."""
    import numpy as np

    plt = _pyplot()
    grid = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.5 * len(rows) + 1.8), dpi=100)
    cmap = plt.get_cmap("Blues").copy()
    cmap.set_bad("#eeeeee")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] > mid and finite.max() > finite.min() else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def bars_png(values: dict[str, float], path, title: str, ylabel: str):
    """One bar per name (e.g. Δm of each run against a baseline)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(values) + 2), 4), dpi=100)
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names], color="#1f77b4")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(title=title, ylabel=ylabel)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
