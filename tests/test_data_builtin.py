"""Every built-in dataset prepares (small copies), with right counts, checksums and content.

Datasets built on Debian-packaged sources (Fashion-MNIST, the OpenCV digit sheet) skip with
the reason where ``scripts/fetch_debs.sh`` could not fetch them; the face datasets skip where
``../shared/data`` is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from framework.data.episodic import IndexedSplit
from framework.data.module import prepare, prepared_dir
from framework.data.render import edges
from framework.data.shards import read_manifest, verify_shards
from framework.data.sources import SourceUnavailable
from framework.registry import DATASETS

LIMIT = 48
SHAPES = {
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "animal_mnist": (1, 28, 28),
    "sklearn_digits": (1, 28, 28),
    "opencv_digits": (1, 28, 28),
    "multimnist": (1, 28, 28),
    "multifashion": (1, 28, 28),
    "multi_fashion_mnist": (1, 28, 28),
    "multi_source": (1, 32, 32),
    "dense_scenes": (3, 64, 64),
    "seg_label_shift": (3, 48, 48),
    "digit_domains": (3, 28, 28),
    "faces": (3, 32, 32),
}


def prepared(data_root, name: str, **keys):
    if name == "faces":  # whole identities up to ~100 images per domain, at the CPU resolution
        keys = {"limit": 2 * LIMIT, "image_size": 32, **keys}
    cfg = DATASETS.get(name).config(**{"limit": LIMIT, **keys})
    try:
        root = prepare(cfg, prepared_dir(cfg, data_root))
    except SourceUnavailable as exc:
        pytest.skip(f"{name}: {exc}")
    return root, read_manifest(root)


def _split(root, manifest, name):
    return IndexedSplit(root, name, manifest["splits"][name], tuple(manifest["tasks"]))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_dataset_prepares_with_right_counts_checksums_shapes_and_labels(data_root, name):
    root, m = prepared(data_root, name)
    verify_shards(root, m)  # every shard and index matches its sha256
    assert tuple(m["image_shape"]) == SHAPES[name]
    assert {"val", "test"} <= set(m["splits"])
    train = [s["split"] for s in m.get("sources", {}).values()] or ["train"]
    for split, entry in m["splits"].items():
        assert entry["count"] == sum(s["count"] for s in entry["shards"]) > 0
        assert len(entry["shards"]) >= min(8, entry["count"])
        data = _split(root, m, split)
        assert len(data) == entry["count"]
        for i in (0, len(data) - 1):
            sample = data.read(i)
            image = sample["image"] if sample["image"].ndim == 3 else sample["image"][None]
            assert image.shape == SHAPES[name] and image.dtype == np.uint8 and image.max() > 0
            for task, label in sample["labels"].items():
                assert 0 <= label < len(m["tasks"][task]["classes"])
    assert all(s in m["splits"] for s in train)


def test_full_sources_are_complete():
    from framework.data import sources

    mnist = sources.load_mnist()
    assert [len(mnist[s][0]) for s in ("train", "val", "test")] == [50000, 10000, 10000]
    animal = sources.load_animal()
    assert sum(len(v[0]) for v in animal.values()) == 10000
    assert len(sources.load_sklearn_digits_all()[0]) == 1797
    try:
        fashion = sources.load_fashion()
        opencv = sources.load_opencv_digits_all()
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    assert sum(len(v[0]) for v in fashion.values()) == 70000
    assert len(opencv[0]) == 5000 and np.bincount(opencv[1]).tolist() == [500] * 10


def test_missing_debian_source_says_why(monkeypatch, tmp_path):
    from framework.data import sources

    monkeypatch.setattr(sources, "deb_roots", lambda: [tmp_path])
    monkeypatch.setattr(sources.shutil, "which", lambda cmd: None)
    with pytest.raises(SourceUnavailable, match="apt is unavailable on this machine"):
        sources.deb_file(sources.OPENCV_DIGITS, "opencv-doc")


def test_multi_source_rows_are_labelled_for_their_own_source_task_only(data_root):
    root, m = prepared(data_root, "multi_source")
    names, task_of = m["extra"]["source_names"], m["extra"]["source_task"]
    for split in [s["split"] for s in m["sources"].values()] + ["val", "cross"]:
        data = _split(root, m, split)
        for i in range(0, len(data), 7):
            s = data.read(i)
            assert list(s["labels"]) == [task_of[names[s["source"]]]]
    cross = _split(root, m, "cross").column("source")
    assert names.index("sklearn_digits") in cross


def test_dense_scene_maps_agree_with_each_other_and_with_the_count(data_root):
    root, m = prepared(data_root, "dense_scenes")
    data = _split(root, m, "train")
    for i in range(len(data)):
        s = data.read(i)
        assert np.array_equal(s["depth"] == 0, s["seg"] == 0)  # background in both
        assert len(np.unique(s["depth"])) - 1 == s["labels"]["count"] + 2  # every object visible
        assert np.array_equal(s["edge"], edges(s["depth"]))  # edges where the visible object changes


def test_label_shift_datasets_only_use_their_own_label_space(data_root):
    root, m = prepared(data_root, "seg_label_shift")
    unified, spaces = m["extra"]["unified"], m["extra"]["label_spaces"]
    names = m["extra"]["datasets"]
    seen = {d: set() for d in names}
    for split in [s["split"] for s in m["sources"].values()] + ["val", "unseen"]:
        data = _split(root, m, split)
        for i in range(len(data)):
            s = data.read(i)
            seen[names[s["domain"]]] |= {unified[c] for c in np.unique(s["seg"])}
    for d in names:
        assert seen[d] <= set(spaces[d]) and len(seen[d]) > 2, d
    assert "garment" not in seen["fine"] and "animal" not in seen["parts"]  # left as background


def test_digit_domains_keep_domains_apart_and_hold_out_sklearn(data_root):
    root, m = prepared(data_root, "digit_domains")
    domains = m["extra"]["domains"]
    for name, src in m["sources"].items():
        assert set(_split(root, m, src["split"]).column("domain")) == {domains.index(name)}
    assert set(_split(root, m, "test").column("domain")) == {0, 1, 2, 3}
    assert set(_split(root, m, "unseen").column("domain")) == {domains.index("sklearn")}


def test_face_splits_are_identity_disjoint_and_pairs_are_valid(data_root):
    root, m = prepared(data_root, "faces")
    persons = {}
    for split in [s["split"] for s in m["sources"].values()] + ["meta", "val", "test"]:
        data = _split(root, m, split)
        persons[split] = set(data.column("person"))
        labels = data.column("label.identity")
        assert (labels >= 0).all() if split.startswith("train") or split == "meta" else (labels == -1).all()
    train = set().union(*(v for k, v in persons.items() if k.startswith("train")))
    assert persons["meta"] <= train and not (train & persons["val"]) and not (train & persons["test"])
    assert not persons["val"] & persons["test"]
    ids = np.concatenate([_split(root, m, s).column("id") for s in m["splits"]])
    assert len(np.unique(ids)) == len(ids)  # face sample ids are unique across splits
    for a, b in m["extra"]["exclude_pairs"]:  # byte-identical files, never paired as positives
        assert a != b
    import json

    pairs = json.loads((root / m["extra"]["pairs_file"]).read_text())
    test = _split(root, m, "test")
    row = {int(v): i for i, v in enumerate(test.column("id"))}
    for domain, rows in pairs["test"].items():
        rows = np.asarray(rows).reshape(-1, 3)
        assert rows[:, 2].sum() * 2 == len(rows) > 0  # half positive
        for a, b, same in rows[:40]:
            sa, sb = test.read(row[int(a)]), test.read(row[int(b)])
            assert sa["domain"] == sb["domain"] == m["extra"]["domains"].index(domain)
            assert (sa["person"] == sb["person"]) == bool(same)
            if same:
                assert not np.array_equal(sa["image"], sb["image"])  # byte-identical files never pair


@pytest.mark.parametrize("name", ["dense_scenes", "faces"])
def test_preview_grid_is_written(data_root, tmp_path, name):
    from PIL import Image

    from framework.data.preview import preview

    root, _ = prepared(data_root, name)
    out = preview(root, tmp_path / f"{name}.png", n=8)
    with Image.open(out) as im:
        assert im.width > 300 and im.height > 100
