"""Writing WebDataset shards and their manifest; reading raw samples back.

A sample on disk is a tar member group ``<key>.img.npy`` (uint8 C×H×W or H×W), optional
``<key>.mask.npy`` and ``<key>.json`` (``{"id": int, "labels": {task: int, ...}, ...}``).
The manifest records every shard's sample count and sha256 so that readers can compute
equal per-rank step counts without opening a shard, and refuse a shard that changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def encode_sample(key: str, sample: dict[str, Any]) -> dict[str, bytes]:
    """``{"image": uint8 array, "mask": optional array, **json fields}`` → tar members."""
    out: dict[str, bytes] = {}
    meta = {}
    for name, value in sample.items():
        if isinstance(value, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            out[f"{name}.npy"] = buf.getvalue()
        else:
            meta[name] = value
    out["json"] = json.dumps(meta, separators=(",", ":")).encode()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_split(
    out_dir: Path, split: str, samples: Iterable[dict[str, Any]], count: int, min_shards: int = 8
) -> dict[str, Any]:
    """Write ``count`` samples as ≥ ``min_shards`` tar shards of near-equal size; return the split entry."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(min_shards, 1) if count >= min_shards else max(count, 1)
    bounds = np.linspace(0, count, n_shards + 1).round().astype(int)
    shards, it, written = [], iter(samples), 0
    for s in range(n_shards):
        name = f"{split}-{s:06d}.tar"
        path = out_dir / name
        tmp = path.with_suffix(".tar.tmp")
        n = int(bounds[s + 1] - bounds[s])
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(n):
                sample = next(it)
                key = f"{written:09d}"
                for ext, payload in encode_sample(key, sample).items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode, info.mtime = len(payload), 0o644, 0
                    tar.addfile(info, io.BytesIO(payload))
                written += 1
        os.replace(tmp, path)
        shards.append({"file": name, "count": n, "sha256": _sha256(path)})
    return {"count": written, "shards": shards}


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    manifest = {"format": FORMAT_VERSION, **manifest}
    path = out_dir / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in {root}: run `medley prepare` for this dataset")
    return json.loads(path.read_text())


def verify_shards(root: Path, manifest: dict[str, Any], split: str | None = None) -> None:
    """Refuse shards whose sha256 differs from the manifest (names the shard)."""
    for name, entry in manifest["splits"].items():
        if split is not None and name != split:
            continue
        for shard in entry["shards"]:
            path = Path(root) / shard["file"]
            if path.exists() and _sha256(path) != shard["sha256"]:
                raise ValueError(f"shard {path} does not match the sha256 in {Path(root) / MANIFEST}; re-prepare it")


def iter_raw_samples(path: Path) -> Iterator[dict[str, bytes]]:
    """Group a shard's members by key without decoding (cheap enough to replay on resume)."""
    current: dict[str, Any] = {}
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def decode_sample(raw: dict[str, bytes]) -> dict[str, Any]:
    out = json.loads(raw["json"])
    for ext, payload in raw.items():
        if ext.endswith(".npy"):
            out[ext[:-4]] = np.load(io.BytesIO(payload), allow_pickle=False)
    return out
