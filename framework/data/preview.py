"""``medley prepare NAME --preview out.png``: a grid of prepared samples for a person to check.

Each cell shows a sample as stored (upscaled), its dense maps beside it (label maps in a
fixed palette, layer order in grey, edges in white) and a caption with its labels by class
name (``-`` = not labelled for that task) and its source/domain. Datasets with identity
episodes show one P×K episode per domain (a row per identity) and verification pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from framework.data.episodic import IndexedSplit
from framework.data.shards import read_manifest

TILE = 84
CAPTION = 12


def _palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    colours = rng.integers(60, 256, size=(max(n, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def _tile(array: np.ndarray, kind: str = "image", levels: int = 2) -> Any:
    from PIL import Image

    if kind == "image":
        rgb = array.transpose(1, 2, 0) if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2)
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
    elif kind == "labels":
        rgb = _palette(max(levels, int(array.max()) + 1))[np.where(array == 255, 0, array)]
    else:  # ordinal map (depth, edges): grey levels
        rgb = np.repeat(
            (array.astype(np.float32) * (255.0 / max(levels - 1, 1)))
            .clip(0, 255)
            .astype(np.uint8)[..., None],
            3,
            2,
        )
    return Image.fromarray(np.ascontiguousarray(rgb)).resize((TILE, TILE), Image.Resampling.NEAREST)


def _caption(sample: dict, manifest: dict) -> str:
    tasks = manifest["tasks"]
    parts = []
    for task, spec in tasks.items():
        v = sample.get("labels", {}).get(task, -1)
        classes = spec["classes"]
        if 0 <= v < len(classes):  # tasks a sample is not labelled for are left out
            parts.append(f"{task}={classes[v]}")
    extra = manifest.get("extra", {})
    if "source" in sample and "source_names" in extra:
        parts.insert(0, extra["source_names"][sample["source"]])
    if "domain" in sample:
        names = extra.get("datasets") or extra.get("domains") or []
        parts.insert(
            0, names[sample["domain"]] if sample["domain"] < len(names) else f"domain {sample['domain']}"
        )
    if "person" in sample:
        parts.append(f"person={sample['person']}")
    return " ".join(parts)


def _cell(sample: dict, manifest: dict) -> Any:
    from PIL import Image, ImageDraw

    dense = manifest.get("extra", {}).get("dense", {})
    tiles = [_tile(sample["image"])]
    for name, spec in dense.items():
        if name in sample:
            kind = "labels" if name == "seg" else "ordinal"
            tiles.append(_tile(sample[name], kind, len(spec.get("classes", [])) or 2))
    width = TILE * len(tiles)
    text = _caption(sample, manifest)
    lines = [text[i : i + width // 6] for i in range(0, len(text), width // 6)][:3]
    cell = Image.new("RGB", (width + 4, TILE + CAPTION * len(lines) + 6), (255, 255, 255))
    for i, t in enumerate(tiles):
        cell.paste(t, (2 + i * TILE, 2))
    draw = ImageDraw.Draw(cell)
    for i, line in enumerate(lines):
        draw.text((2, TILE + 3 + i * CAPTION), line, fill=(0, 0, 0))
    return cell


def _grid(cells: list, columns: int, title: str) -> Any:
    from PIL import Image, ImageDraw

    w = max(c.width for c in cells)
    h = max(c.height for c in cells)
    rows = -(-len(cells) // columns)
    grid = Image.new("RGB", (columns * w, rows * h + 16), (255, 255, 255))
    ImageDraw.Draw(grid).text((4, 2), title, fill=(0, 0, 0))
    for i, c in enumerate(cells):
        grid.paste(c, ((i % columns) * w, 16 + (i // columns) * h))
    return grid


def _stack(images: list) -> Any:
    from PIL import Image

    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), (255, 255, 255))
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out


def preview(root: Path, out: Path, n: int = 32, seed: int = 0) -> Path:
    """Write a preview grid of the prepared dataset in ``root`` to ``out`` (PNG)."""
    root, out = Path(root), Path(out)
    manifest = read_manifest(root)
    tasks = tuple(manifest["tasks"])
    rng = np.random.default_rng(seed)
    sources = [s["split"] for s in manifest.get("sources", {}).values()] or ["train"]
    panels = []
    if manifest.get("episodes"):
        group = manifest["episodes"]["group"]
        for split_name in sources:
            split = IndexedSplit(root, split_name, manifest["splits"][split_name], tasks)
            labels = split.column(f"label.{group}")
            groups = [g for g in np.unique(labels) if (labels == g).sum() >= 2][:4]
            cells = []
            for g in groups:
                rows = rng.permutation(np.flatnonzero(labels == g))[:4]
                cells += [_cell(split.read(int(i)), manifest) for i in rows]
                cells += [_cell(split.read(int(rows[0])), manifest)] * (4 - len(rows))
            panels.append(
                _grid(cells, 4, f"{manifest['name']} {split_name}: P={len(groups)} identities x K=4")
            )
        panels.append(_pairs_panel(root, manifest, tasks, rng))
    else:
        per = max(n // len(sources), 4)
        for split_name in sources:
            split = IndexedSplit(root, split_name, manifest["splits"][split_name], tasks)
            rows = np.sort(rng.choice(len(split), size=min(per, len(split)), replace=False))
            cells = [_cell(split.read(int(i)), manifest) for i in rows]
            columns = 8 if cells[0].width < 2 * TILE else 4
            panels.append(_grid(cells, columns, f"{manifest['name']} {split_name} ({len(split)} samples)"))
        for extra_split in ("cross", "unseen"):
            if extra_split in manifest["splits"]:
                split = IndexedSplit(root, extra_split, manifest["splits"][extra_split], tasks)
                rows = np.sort(rng.choice(len(split), size=min(8, len(split)), replace=False))
                cells = [_cell(split.read(int(i)), manifest) for i in rows]
                panels.append(_grid(cells, 8 if cells[0].width < 2 * TILE else 4, f"{extra_split} split"))
    out.parent.mkdir(parents=True, exist_ok=True)
    _stack(panels).save(out)
    return out


def _pairs_panel(root: Path, manifest: dict, tasks: tuple, rng: np.random.Generator) -> Any:
    """Verification pairs of the test split: 4 positive and 4 negative per domain."""
    import json

    pairs = json.loads((root / manifest["extra"]["pairs_file"]).read_text())["test"]
    split = IndexedSplit(root, "test", manifest["splits"]["test"], tasks)
    where = {int(v): i for i, v in enumerate(split.column("id"))}
    cells = []
    for rows in pairs.values():
        rows = np.asarray(rows).reshape(-1, 3)
        for same in (1, 0):
            pick = rows[rows[:, 2] == same][:2]
            for a, b, _ in pick:
                sa, sb = split.read(where[int(a)]), split.read(where[int(b)])
                sa["labels"], sb["labels"] = {}, {}
                cells += [_cell(sa, manifest), _cell(sb, manifest)]
    return _grid(
        cells, 8, "test verification pairs per domain: 2 positive then 2 negative pairs (left, right)"
    )
