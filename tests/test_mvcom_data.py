"""The faces dataset's variation factors for MvCoM: synthetic blur and occlusion applied at prepare
time with recorded levels, skewed in training and balanced in the meta/val/test splits; level and
identity counts in the manifest; nothing changes when no synthetic factor is asked for."""

import numpy as np
import pytest

from framework.data.builtin import FacesConfig
from framework.data.builtin.faces import degrade, draw_levels
from framework.data.episodic import IndexedSplit
from framework.data.module import prepare
from framework.data.shards import read_manifest
from tests.helpers.mvcom_workers import face_folder


def _split(root, manifest, name):
    attrs = tuple(manifest["extra"]["attributes"])
    return IndexedSplit(root, name, manifest["splits"][name], manifest["tasks"], attrs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return face_folder(tmp_path_factory.mktemp("faces") / "toy", identities=8, images=10)


def _prepare(folder, out, **keys):
    cfg = FacesConfig(src=[str(folder)], domains=["toy"], image_size=16, channels=1, min_shards=1, **keys)
    root = prepare(cfg, out)
    return root, read_manifest(root)


def test_balanced_design_gives_every_level_equally_often_and_the_skewed_one_mostly_level_zero():
    rng = np.random.default_rng(0)
    assert np.bincount(draw_levels(300, 3, None, rng)).tolist() == [100, 100, 100]
    skewed = np.bincount(draw_levels(4000, 3, 0.1, rng), minlength=3) / 4000
    assert abs(skewed[0] - 0.9) < 0.02 and abs(skewed[1] - 0.05) < 0.015 and abs(skewed[2] - 0.05) < 0.015


def test_degradations_blur_and_occlude_at_their_levels():
    img = np.zeros((16, 16), np.uint8)
    img[8, 8] = 255  # one bright point: a wider blur spreads it thinner
    cfg = FacesConfig(blur_sigmas=[1.0, 2.0], occlusion_size=0.5)
    rng = np.random.default_rng(0)
    peak = [int(degrade(img, {"blur": b}, cfg, rng).max()) for b in (0, 1, 2)]
    assert peak[0] == 255 > peak[1] > peak[2] > 0
    occluded = degrade(img, {"occlusion": 1}, cfg, np.random.default_rng(1))
    changed = occluded != img
    rows, cols = np.nonzero(changed)
    assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8 and changed.sum() > 16  # one 8×8 patch
    rgb = np.stack([img] * 3)
    assert degrade(rgb, {"blur": 2}, cfg, rng).shape == (3, 16, 16)


def test_synthetic_levels_are_recorded_skewed_in_training_and_balanced_elsewhere(folder, tmp_path):
    root, m = _prepare(folder, tmp_path / "synth", synthetic=["blur", "occlusion"], synthetic_p_train=0.2,
                       meta_per_identity=2)
    extra = m["extra"]
    assert extra["attributes"]["blur"] == ["none", "sigma1", "sigma2"]
    assert extra["attributes"]["occlusion"] == ["none", "occluded"]
    counts = extra["level_counts"]
    for split in ("meta", "val", "test"):
        blur = counts[split]["blur"]
        assert max(blur) - min(blur) <= 1, (split, blur)  # every level equally often
    train = counts["train.toy"]["blur"]
    assert train[0] > train[1] + train[2]  # mostly untouched
    for split, expected in counts.items():  # the manifest's counts are the shards' attributes
        column = _split(root, m, split).column("attr.blur")
        assert np.bincount(column, minlength=3).tolist() == expected["blur"]
    train_rows = _split(root, m, "train.toy")
    assert sum(extra["identity_counts"]) == len(train_rows)
    # a degraded row differs from its clean source image; clean rows are the plain crops
    clean_root, clean_m = _prepare(folder, tmp_path / "clean")
    clean = _split(clean_root, clean_m, "test")
    test = _split(root, m, "test")
    by_id = {int(i): r for r, i in enumerate(clean.column("id"))}
    for r in range(len(test)):
        s = test.read(r)
        c = clean.read(by_id[int(s["id"])])
        degraded = s["attrs"]["blur"] > 0 or s["attrs"]["occlusion"] > 0
        assert np.array_equal(s["image"], c["image"]) != degraded


def test_without_synthetic_factors_the_dataset_is_unchanged(folder, tmp_path):
    _, m = _prepare(folder, tmp_path / "plain")
    assert "blur" not in m["extra"]["attributes"] and "occlusion" not in m["extra"]["attributes"]
    _, again = _prepare(folder, tmp_path / "plain_again", synthetic_p_train=0.5, blur_sigmas=[3.0])
    # the synthetic keys alone change nothing: the same splits, sample ids and bytes
    assert {k: v["count"] for k, v in m["splits"].items()} == {k: v["count"] for k, v in again["splits"].items()}
    assert [s["sha256"] for v in m["splits"].values() for s in v["shards"]] == \
        [s["sha256"] for v in again["splits"].values() for s in v["shards"]]


def test_unknown_synthetic_factor_is_refused_naming_the_key(folder, tmp_path):
    with pytest.raises(ValueError, match=r"data.synthetic: \['rain'\]"):
        _prepare(folder, tmp_path / "bad", synthetic=["rain"])
