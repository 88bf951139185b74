"""Writing a built-in dataset: splits of arrays → shards, and the manifest around them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from framework.data.shards import write_manifest, write_split


def capped(n: int, limit: int | None) -> int:
    """``n`` samples, or ``limit`` (``--limit``: small prepared copies for tests)."""
    return min(n, limit) if limit else n


def array_samples(
    images: np.ndarray, labels: dict[str, np.ndarray], id_offset: int = 0, **fields: np.ndarray
) -> Iterator[dict[str, Any]]:
    """Samples from aligned arrays: ``image``, ``labels`` per task (-1 entries left out), and
    per-sample integer ``fields`` (``domain``, ``source``, ...)."""
    for i in range(len(images)):
        sample: dict[str, Any] = {
            "image": images[i],
            "id": id_offset + i,
            "labels": {t: int(v[i]) for t, v in labels.items() if v[i] >= 0},
        }
        sample.update({k: int(v[i]) for k, v in fields.items()})
        yield sample


def write_splits(
    out_dir: Path, splits: dict[str, tuple[int, Callable[[], Iterator[dict]]]], min_shards: int
) -> dict[str, Any]:
    """``{split: (count, sample factory)}`` → manifest ``splits`` entries."""
    return {
        name: write_split(out_dir, name, make(), count, min_shards) for name, (count, make) in splits.items()
    }


def finish(
    out_dir: Path,
    name: str,
    tasks: dict[str, list[str]],
    image_shape: tuple[int, ...],
    splits: dict[str, Any],
    source: str,
    **extra_fields: Any,
) -> Path:
    """Write ``manifest.json``: tasks with class names, image shape, splits, provenance."""
    manifest = {
        "name": name,
        "tasks": {t: {"classes": list(c)} for t, c in tasks.items()},
        "image_shape": list(image_shape),
        "splits": splits,
        "source": source,
    }
    manifest.update(extra_fields)
    return write_manifest(out_dir, manifest)
