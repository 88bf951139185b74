"""Dense scenes: a miniature of NYU-v2 / PASCAL-Context dense multi-task learning.

Each ``size``² RGB scene holds ``min_objects``..``max_objects`` real objects (MNIST digits and
Animal-MNIST silhouettes by default; Fashion-MNIST garments with ``families``), each scaled
to 20–36 px, tinted with a random colour and painted back to front over dark noise, so later
objects occlude earlier ones. Per-pixel targets (``dense`` in batches):

* ``seg``: semantic class of the visible object (0 background, then every family's classes);
* ``depth``: layer order of the visible object, 0 for the background and ``k`` for the
  ``k``-th object painted (larger = nearer), a stand-in for depth;
* ``edge``: 1 on object boundaries (where the visible object changes between 4-neighbours).

Image-level task ``count``: the number of objects (class ``i`` means ``min_objects + i``).
Objects are drawn from the source's own split, so test scenes hold unseen object images. A
scene is redrawn when an object would keep less than 40 % of its pixels visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framework.data.builtin.common import capped, finish, write_splits
from framework.data.render import OBJECT_THRESHOLD, edges, resize
from framework.data.sources import FAMILY_CLASSES, load_family

SCALES = (20, 24, 28, 32, 36)


def palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bright, saturated colours (uint8 [n, 3])."""
    base = rng.uniform(0.35, 1.0, size=(n, 3))
    base[np.arange(n), rng.integers(3, size=n)] = 1.0
    return (base * 255).astype(np.uint8)


class ObjectBank:
    """Objects of one split at every scale, with their semantic class."""

    def __init__(self, families: list[str], split: str, limit: int | None):
        images, classes, offset = [], [], 1
        for fam in families:
            x, y = load_family(fam)[split]
            n = capped(len(x), limit)
            images.append(x[:n])
            classes.append(y[:n] + offset)
            offset += len(FAMILY_CLASSES[fam])
        self.images = np.concatenate(images)
        self.classes = np.concatenate(classes).astype(np.uint8)
        self.scaled = {s: resize(self.images, s) for s in SCALES}


def render_scene(bank: ObjectBank, size: int, n_obj: int, rng: np.random.Generator):
    """One scene: (image 3×H×W, seg, depth, edge) or None when an object is mostly hidden."""
    image = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
    seg = np.zeros((size, size), np.uint8)
    depth = np.zeros((size, size), np.uint8)
    instance = np.zeros((size, size), np.int32)
    colours = palette(rng, n_obj)
    own = []
    for k in range(n_obj):
        i = int(rng.integers(len(bank.images)))
        s = SCALES[int(rng.integers(len(SCALES)))]
        obj = bank.scaled[s][i]
        mask = obj >= OBJECT_THRESHOLD
        y, x = rng.integers(0, size - s + 1, size=2)
        region = (slice(y, y + s), slice(x, x + s))
        shade = (0.55 + 0.45 * obj[mask].astype(np.float32) / 255.0)[:, None]
        patch = image[region]
        patch[mask] = (colours[k] * shade).astype(np.uint8)
        seg[region][mask] = bank.classes[i]
        depth[region][mask] = k + 1
        instance[region][mask] = k + 1
        own.append(int(mask.sum()))
    for k in range(n_obj):
        if (instance == k + 1).sum() < 0.4 * own[k]:
            return None
    return np.ascontiguousarray(image.transpose(2, 0, 1)), seg, depth, edges(instance)


def scenes(bank: ObjectBank, n: int, cfg, rng: np.random.Generator, id_offset: int = 0):
    lo, hi = cfg.min_objects, cfg.max_objects
    made = 0
    while made < n:
        n_obj = int(rng.integers(lo, hi + 1))
        out = render_scene(bank, cfg.size, n_obj, rng)
        if out is None:
            continue
        image, seg, depth, edge = out
        yield {
            "image": image,
            "seg": seg,
            "depth": depth,
            "edge": edge,
            "id": id_offset + made,
            "labels": {"count": n_obj - lo},
        }
        made += 1


def prepare(cfg, out_dir: Path, limit: int | None = None) -> Path:
    if not 1 <= cfg.min_objects <= cfg.max_objects:
        raise ValueError("data.min_objects/max_objects: need 1 <= min_objects <= max_objects")
    families = list(cfg.families)
    sizes = {
        "train": capped(cfg.train_size, limit),
        "val": capped(cfg.eval_size, limit),
        "test": capped(cfg.eval_size, limit),
    }
    splits = {}
    for k, (split, n) in enumerate(sizes.items()):
        bank = ObjectBank(families, split, limit)
        rng = np.random.default_rng([cfg.seed, k])
        splits[split] = (n, lambda bank=bank, n=n, rng=rng: scenes(bank, n, cfg, rng))
    seg_classes = ["background"] + [f"{fam}:{c}" for fam in families for c in FAMILY_CLASSES[fam]]
    counts = [str(c) for c in range(cfg.min_objects, cfg.max_objects + 1)]
    dense = {
        "seg": {"classes": seg_classes},
        "depth": {"classes": ["background"] + [f"layer{k}" for k in range(1, cfg.max_objects + 1)]},
        "edge": {"classes": ["interior", "edge"]},
    }
    return finish(
        out_dir,
        cfg.name,
        {"count": counts},
        (3, cfg.size, cfg.size),
        write_splits(out_dir, splits, cfg.min_shards),
        f"objects from {', '.join(families)} (real images), dense scene construction",
        extra={"dense": dense, "families": families},
    )
