"""Shards named by URL in a manifest (``http://``, ``pipe:``) are streamed through webdataset's
openers with the same planning, sha256 check and exact resume as local shards."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from framework.data.builtin import MultiMNISTConfig
from framework.data.module import DataModule
from framework.data.shards import MANIFEST, ShardError


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_root):
    """A copy of a prepared dataset whose train shards are URLs on a local HTTP server and whose
    val shards are ``pipe:cat`` commands; the original files stay where the server reads them."""
    local = DataModule(MultiMNISTConfig(limit=512, batch_size=32), data_root, seed=0)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(local.root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    remote_root = tmp_path_factory.mktemp("remote")
    copy = remote_root / local.root.name
    copy.mkdir()
    manifest = json.loads((local.root / MANIFEST).read_text())
    for shard in manifest["splits"]["train"]["shards"]:
        shard["file"] = f"{base}/{shard['file']}"
    for shard in manifest["splits"]["val"]["shards"]:
        shard["file"] = f"pipe:cat {local.root / shard['file']}"
    for split, entry in manifest["splits"].items():
        if split == "test":
            for shard in entry["shards"]:
                shutil.copy(local.root / shard["file"], copy / shard["file"])
        shutil.copy(local.root / entry["index"]["file"], copy / entry["index"]["file"])
    (copy / MANIFEST).write_text(json.dumps(manifest))
    yield {"local": local, "root": remote_root, "copy": copy, "base": base}
    server.shutdown()


def _edited_copy(served, tmp_path, edit) -> tuple[dict, Path]:
    """A copy of the served dataset whose manifest ``edit`` changed in place; (manifest, data root)."""
    root = tmp_path / "data"
    copy = root / served["copy"].name
    shutil.copytree(served["copy"], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    edit(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return manifest, root


def _ids(batches, n):
    return [[int(i) for i in next(batches)["id"]] for _ in range(n)]


def test_http_shards_give_the_same_batches_as_local_ones(served):
    remote = DataModule(MultiMNISTConfig(limit=512, batch_size=32, allow_pipe_shards=True), served["root"], seed=0)
    assert remote.root == served["copy"]
    steps = remote.steps_in_epoch(0)
    assert steps == served["local"].steps_in_epoch(0) == 16  # planned from the manifest alone
    assert _ids(remote.epoch_batches(), steps + 2) == _ids(served["local"].epoch_batches(), steps + 2)


def test_resume_from_http_shards_continues_exactly(served):
    cfg = MultiMNISTConfig(limit=512, batch_size=32, allow_pipe_shards=True)
    full = _ids(DataModule(cfg, served["root"], seed=0).epoch_batches(), 12)
    first = DataModule(cfg, served["root"], seed=0)
    stream = first.epoch_batches()
    head = _ids(stream, 5)
    state = first.state_dict()
    second = DataModule(cfg, served["root"], seed=0)
    second.load_state_dict(state)
    assert head + _ids(second.epoch_batches(), 7) == full


def test_pipe_shards_are_evaluated_with_every_sample_once(served):
    remote = DataModule(MultiMNISTConfig(limit=512, batch_size=32, eval_batch_size=100, allow_pipe_shards=True), served["root"], seed=0)
    ids = [int(i) for b in remote.eval_loader("val") for i, keep in zip(b["id"], b["mask"]) if keep]
    assert sorted(ids) == list(range(512))


def test_a_remote_shard_whose_bytes_differ_from_the_manifest_sha256_is_named(served, tmp_path):
    manifest, root = _edited_copy(served, tmp_path, lambda m: m["splits"]["val"]["shards"][0].update(sha256="0" * 64))
    bad = manifest["splits"]["val"]["shards"][0]
    dm = DataModule(MultiMNISTConfig(limit=512, batch_size=32, eval_batch_size=100, allow_pipe_shards=True), root, seed=0)
    with pytest.raises(ShardError, match="sha256") as err:
        list(dm.eval_loader("val"))
    assert bad["file"] in str(err.value)
    off = DataModule(MultiMNISTConfig(limit=512, batch_size=32, eval_batch_size=100, verify="none", allow_pipe_shards=True), root, seed=0)
    assert sum(int(b["mask"].sum()) for b in off.eval_loader("val")) == 512  # verify=none reads it


def test_pipe_shards_run_only_where_the_config_allows_them(served):
    with pytest.raises(ValueError, match="allow_pipe_shards"):
        DataModule(MultiMNISTConfig(limit=512, batch_size=32), served["root"], seed=0)


def test_a_missing_url_fails_naming_it(served, tmp_path):
    missing = f"{served['base']}/no-such-shard.tar"
    _, root = _edited_copy(served, tmp_path, lambda m: m["splits"]["train"]["shards"][0].update(file=missing))
    dm = DataModule(MultiMNISTConfig(limit=512, batch_size=32, allow_pipe_shards=True), root, seed=0)
    with pytest.raises(ShardError, match="no-such-shard.tar"):
        _ids(dm.epoch_batches(), 16)
