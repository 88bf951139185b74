"""``medley prepare`` through the data package's argument handling: --src, --domain, --preview."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def _face_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,identity,pose"]
    for p in range(6):
        (root / f"person{p}").mkdir(parents=True)
        for k in range(4):
            pixels = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"person{p}" / f"{k}.png")
            rows.append(f"person{p}/{k}.png,person{p},{'left' if k % 2 else 'front'}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_prepare_a_face_folder_as_a_named_domain_with_a_preview(tmp_path):
    src = _face_folder(tmp_path / "myfaces")
    out, png = tmp_path / "prepared", tmp_path / "preview.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "framework.data.cli",
            "faces",
            "--src",
            str(src),
            "--domain",
            "studio",
            "--out",
            str(out),
            "--preview",
            str(png),
            "image_size=24",
            "attributes=[pose]",
            "min_shards=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["domains"] == ["studio"] and manifest["image_shape"] == [3, 24, 24]
    assert manifest["extra"]["attributes"]["pose"] == ["front", "left"]
    assert "train.studio" in manifest["splits"] and png.stat().st_size > 0


def test_unknown_dataset_and_bad_arguments_exit_with_a_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "framework.data.cli", "no_such_data"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "unknown dataset 'no_such_data'" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "framework.data.cli", "mnist", "--bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "--bogus" in proc.stderr


@pytest.mark.parametrize("key", ["data.verify=md5", "data.mix_unit=row"])
def test_loader_keys_are_checked_at_start_up(data_root, key):
    from framework.data.builtin import MultiMNISTConfig
    from framework.data.module import DataModule

    field, value = key.split(".")[1].split("=")
    with pytest.raises(ValueError, match=f"data.{field}: '{value}'"):
        DataModule(MultiMNISTConfig(limit=64, **{field: value}), data_root, seed=0)


def test_every_data_config_file_composes_into_its_dataset_schema(compose):
    from framework.config import CONFIG_DIR, plugin_config
    from framework.registry import DATASETS

    names = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
    assert {"mnist", "multi_source", "dense_scenes", "seg_label_shift", "digit_domains", "faces"} <= set(
        names
    )
    for name in names:
        cfg = plugin_config(compose(f"data={name}").data, DATASETS)
        assert isinstance(cfg, DATASETS.get(cfg.name).config)
