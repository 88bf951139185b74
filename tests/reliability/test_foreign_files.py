"""Files that try to steer a run: a data manifest or a DeepSpeed pointer naming a path outside its
directory, and checkpoint files that are not Medley's (a pickle that runs code when loaded, a
plain tensor file, random bytes). Each is refused with an error naming the file; nothing is
written outside the run directory and nothing but tensors and plain containers is unpickled."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from framework.checkpoint import CheckpointError, load_file
from framework.run import train
from tests.helpers import reliability as R

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(R.TIMEOUT_S)]
ROW = "foreign or escaping files"


class _Payload:
    """Unpickling this writes ``marker``: proof that an object other than a tensor was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _tree(root: Path, skip: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if skip not in p.parents and p != skip}


def _foreign_checkpoints(tmp: Path) -> dict[str, Path]:
    marker = tmp / "marker"
    files = {}
    evil = tmp / "foreign" / "payload.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"step": 2, "model": {}, "world_size": 1, "x": _Payload(marker)}, evil)
    files["pickle that runs code"] = evil
    plain = tmp / "foreign" / "tensors.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    files["plain tensor file"] = plain
    junk = tmp / "foreign" / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    files["random bytes"] = junk
    legacy = tmp / "foreign" / "legacy.pt"
    with open(legacy, "wb") as f:
        pickle.dump({"step": 1, "model": _Payload(marker), "world_size": 1}, f)
    files["plain pickle (not a torch zip)"] = legacy
    return files


def test_checkpoints_that_are_not_medleys_are_refused_without_unpickling(compose, tmp_path):
    files = _foreign_checkpoints(tmp_path)
    failed = []
    for what, path in files.items():
        run_dir = tmp_path / f"run-{path.stem}"
        before = _tree(tmp_path, run_dir)
        try:
            train(compose(*R.TINY, "trainer.max_steps=2", f"paths.run_dir={run_dir}", f"resume={path}"))
            failed.append(f"{what}: accepted")
        except CheckpointError as exc:
            if str(path) not in str(exc):
                failed.append(f"{what}: message does not name the file: {exc}")
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{what}: {type(exc).__name__}: {exc}")
        if (tmp_path / "marker").exists():
            failed.append(f"{what}: an object was unpickled")
        written = _tree(tmp_path, run_dir) - before
        if written:
            failed.append(f"{what}: wrote outside the run directory: {sorted(written)}")
    R.record(ROW, "checkpoint that is not Medley's", ", ".join(files), len(files), len(files) - len(failed),
             ("CheckpointError naming the file", "nothing unpickled", "nothing written outside the run directory"))
    assert not failed, "\n".join(failed)


def test_a_deepspeed_pointer_naming_a_directory_outside_the_checkpoints_is_refused(tmp_path):
    from framework.strategies.deepspeed import DeepSpeedStrategy

    outside = ["../../elsewhere", "/etc", "..", "a/../../b", ""]
    failed = []
    for name in outside:
        pointer = tmp_path / "checkpoints" / "step-00000002.pt"
        pointer.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"step": 2, "model": {}, "world_size": 2, "format": "deepspeed",
                    "deepspeed": {"dir": name, "zero_stage": 2, "world_size": 2}}, pointer)
        state = load_file(pointer)
        engine_used = []
        fake = SimpleNamespace(stage=2, engine=SimpleNamespace(load_checkpoint=lambda *a, **k: engine_used.append(a)))
        try:
            DeepSpeedStrategy.load_optimizers(fake, {}, state, pointer)
            failed.append(f"{name!r}: accepted")
        except CheckpointError as exc:
            if repr(name)[1:-1] not in str(exc) or str(pointer) not in str(exc):
                failed.append(f"{name!r}: unclear: {exc}")
        if engine_used:
            failed.append(f"{name!r}: DeepSpeed was asked to read it")
    R.record(ROW, "DeepSpeed pointer naming a shard directory outside checkpoints/", ", ".join(map(repr, outside)),
             len(outside), len(outside) - len(failed), ("refused naming the pointer and the entry", "nothing read"))
    assert not failed, "\n".join(failed)


def test_a_manifest_naming_a_file_outside_the_dataset_directory_is_refused(compose, data_root, tmp_path):
    from framework.config import plugin_config
    from framework.data.module import DataModule, prepared_dir
    from framework.registry import DATASETS

    cfg = compose(*R.TINY, "trainer.max_steps=1", f"paths.run_dir={tmp_path / 'warm'}")
    train(cfg)  # the dataset is prepared in data_root
    data_cfg = plugin_config(cfg.data, DATASETS)
    prepared = prepared_dir(data_cfg, data_root)
    escapes = ["../../outside.tar", "/etc/passwd", "a/../../../b.tar"]
    failed = []
    for n, escape in enumerate(escapes):
        root = tmp_path / f"data{n}"
        copy = root / prepared.name
        shutil.copytree(prepared, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        split = next(iter(manifest["splits"]))
        manifest["splits"][split]["shards"][0]["file"] = escape
        (copy / "manifest.json").write_text(json.dumps(manifest))
        try:
            DataModule(data_cfg, root, 0).epoch_batches()
            failed.append(f"{escape}: accepted")
        except ValueError as exc:
            if escape not in str(exc) or "manifest.json" not in str(exc):
                failed.append(f"{escape}: unclear: {exc}")
    R.record(ROW, "data manifest naming a file outside the dataset directory", ", ".join(escapes),
             len(escapes), len(escapes) - len(failed), ("refused naming the manifest, key and entry",))
    assert not failed, "\n".join(failed)


def test_a_manifest_shard_entry_that_is_a_shell_command_is_refused(compose, data_root, tmp_path):
    from framework.config import plugin_config
    from framework.data.module import DataModule, prepared_dir
    from framework.registry import DATASETS

    cfg = compose(*R.TINY, "trainer.max_steps=1", f"paths.run_dir={tmp_path / 'warm'}")
    train(cfg)
    prepared = prepared_dir(plugin_config(cfg.data, DATASETS), data_root)
    copy = tmp_path / "data" / prepared.name
    shutil.copytree(prepared, copy)
    marker = tmp_path / "ran"
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            shard["file"] = f"pipe:touch {marker}; cat /dev/null"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    refused = False
    try:
        next(DataModule(plugin_config(cfg.data, DATASETS), tmp_path / "data", 0).epoch_batches())
    except Exception as exc:  # noqa: BLE001 - refused, or failed after running the command
        refused = "pipe:" in str(exc) and not marker.exists()
    R.record(ROW, "data manifest whose shard entry is a `pipe:` shell command", "pipe:touch MARKER", 1,
             int(refused and not marker.exists()), ("refused before anything runs",),
             "the command ran" if marker.exists() else "")
    assert refused and not marker.exists()
