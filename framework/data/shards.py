"""Writing WebDataset shards, their manifest and sample index; reading raw samples back.

A sample on disk is a tar member group ``<key>.image.npy`` (uint8 H×W or C×H×W), optional
dense maps ``<key>.<name>.npy`` (H×W) and ``<key>.json`` (``{"id": int, "labels": {task: int},
...}``), so plain ``webdataset`` reads the shards too. The manifest records every shard's
sample count, size and sha256: readers compute equal per-rank step counts without opening a
shard and refuse a shard that changed. Each split also gets an index (``<split>.index.npz``:
shard, byte offset and length of every sample, plus its integer labels) so that samplers
that need random access (P×K episodes, balanced meta batches) read single samples directly.

The reader parses tar headers itself: it is several times faster than ``tarfile`` on small
members, checks every header checksum, and a shard that ends early or holds fewer samples
than its manifest entry raises ``ShardError`` naming the shard (``tarfile`` stops silently at
a corrupt header in the middle of a stream).

A manifest's shard entries may also be URLs (``http://``, ``https://``, ``pipe:COMMAND``): such
a shard is opened through ``webdataset``'s ``gopen`` and streamed. Counts still come from the
manifest, so planning and exact resume are unchanged; a remote shard cannot be statted or hashed
at start-up, so its sha256 is checked while it is read (a mismatch raises once the shard ends).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MANIFEST = "manifest.json"
REMOTE = ("http://", "https://", "pipe:")
FORMAT_VERSION = 2
BLOCK = 512


class ShardError(RuntimeError):
    """A shard could not be read completely. ``good`` samples were read before the failure."""

    def __init__(self, path: Path | str, good: int = 0, detail: str | None = None):
        if detail is None:  # re-raised from a DataLoader worker with the message only
            super().__init__(str(path))
            self.path, self.good, self.detail = "", good, str(path)
            return
        super().__init__(f"shard {path}: {detail}")
        self.path, self.good, self.detail = str(path), good, detail


# ----------------------------------------------------------------------------------- writing
def encode_sample(sample: dict[str, Any]) -> dict[str, bytes]:
    """``{"image": uint8 array, other arrays..., **json fields}`` → ``{ext: payload}``."""
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


def _header(name: str, size: int) -> bytes:
    """A ustar header for a regular file (mode 0644, mtime 0: shards are byte-reproducible)."""
    h = bytearray(BLOCK)
    h[0 : len(name)] = name.encode()
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _int_fields(sample: dict[str, Any]) -> dict[str, int]:
    """Integer metadata kept in the split index: labels, domain/source ids, attributes."""
    out = {f"label.{t}": int(v) for t, v in sample.get("labels", {}).items()}
    for key in ("domain", "source", "person"):
        if key in sample:
            out[key] = int(sample[key])
    out.update({f"attr.{k}": int(v) for k, v in sample.get("attrs", {}).items()})
    return out


def write_split(
    out_dir: Path, split: str, samples: Iterable[dict[str, Any]], count: int, min_shards: int = 8
) -> dict[str, Any]:
    """Write ``count`` samples as ≥ ``min_shards`` tar shards of near-equal size plus the
    split's index; return the manifest entry of the split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(min_shards, 1) if count >= min_shards else max(count, 1)
    bounds = np.linspace(0, count, n_shards + 1).round().astype(int)
    shards, it, written = [], iter(samples), 0
    index: dict[str, list[int]] = {"shard": [], "offset": [], "length": [], "id": []}
    fields: list[dict[str, int]] = []
    for s in range(n_shards):
        name = f"{split}-{s:06d}.tar"
        path = out_dir / name
        tmp = path.with_suffix(".tar.tmp")
        n = int(bounds[s + 1] - bounds[s])
        with open(tmp, "wb") as f:
            for _ in range(n):
                sample = next(it)
                start = f.tell()
                key = f"{written:09d}"
                for ext, payload in encode_sample(sample).items():
                    f.write(_header(f"{key}.{ext}", len(payload)))
                    f.write(payload)
                    f.write(b"\0" * (-len(payload) % BLOCK))
                index["shard"].append(s)
                index["offset"].append(start)
                index["length"].append(f.tell() - start)
                index["id"].append(int(sample["id"]))
                fields.append(_int_fields(sample))
                written += 1
            f.write(b"\0" * (2 * BLOCK))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        shards.append({"file": name, "count": n, "bytes": path.stat().st_size, "sha256": _sha256(path)})
    if next(it, None) is not None:
        raise ValueError(f"split {split}: more samples than the declared count {count}")
    keys = sorted({k for f in fields for k in f})
    arrays = {k: np.asarray(v, np.int64) for k, v in index.items()}
    arrays.update({k: np.asarray([f.get(k, -1) for f in fields], np.int64) for k in keys})
    index_file = f"{split}.index.npz"
    np.savez(out_dir / index_file, **arrays)
    return {
        "count": written,
        "shards": shards,
        "index": {"file": index_file, "sha256": _sha256(out_dir / index_file)},
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    manifest = {"format": FORMAT_VERSION, **manifest}
    path = out_dir / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(root: Path, allow_pipe: bool = False) -> dict[str, Any]:
    """The dataset's manifest, its file entries checked (``allow_pipe``: ``data.allow_pipe_shards``)."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in {root}: run `medley prepare` for this dataset")
    manifest = json.loads(path.read_text())
    check_file_entries(manifest, path, allow_pipe)
    return manifest


def _file_entries(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(key, value) of every file the manifest names, keys written as in the manifest."""
    for split, entry in manifest.get("splits", {}).items():
        for k, shard in enumerate(entry.get("shards", [])):
            yield f"splits.{split}.shards[{k}].file", shard.get("file")
        if "index" in entry:
            yield f"splits.{split}.index.file", entry["index"].get("file")
    pairs = manifest.get("extra", {}).get("pairs_file")
    if pairs is not None:
        yield "extra.pairs_file", pairs


def is_remote(file: Any) -> bool:
    """A shard entry that names a URL (``http(s)://``) or a ``pipe:`` command, not a file."""
    return isinstance(file, str) and file.startswith(REMOTE)


def shard_location(root: Path | str, file: str) -> Path | str:
    """Where a shard entry is read from: the URL itself, or the file inside the dataset directory."""
    return file if is_remote(file) else Path(root) / file


def _inside(file: Any) -> bool:
    """A relative path without ``..`` (``/`` or ``\\`` separated, no drive letter)."""
    if not isinstance(file, str) or not file:
        return False
    parts = file.replace("\\", "/").split("/")
    return parts[0] != "" and ":" not in parts[0] and ".." not in parts


def check_file_entries(manifest: dict[str, Any], path: Path | str, allow_pipe: bool = False) -> None:
    """Refuse a manifest whose file entries leave the dataset directory (absolute, ``..``):
    a copied or hand-edited manifest must not make a run read files of another dataset. A ``pipe:``
    entry is a shell command: it runs only where the config allows it, never from a manifest alone."""
    for key, file in _file_entries(manifest):
        if ".shards[" in key and isinstance(file, str) and file.startswith("pipe:") and not allow_pipe:
            raise ValueError(f"{path}: {key} = {file!r} is a shell command; set data.allow_pipe_shards=true "
                             f"to run commands named by this manifest")
        if ".shards[" in key and is_remote(file):
            continue  # a URL: read through webdataset's openers, never resolved against the directory
        if not _inside(file):
            raise ValueError(
                f"{path}: {key} = {file!r} is not a relative path inside the dataset directory; "
                f"{reprepare_hint(Path(path).parent, manifest)} to write a valid manifest"
            )


# ------------------------------------------------------------------------------ verification
_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime_ns, sha256) already checked


def reprepare_hint(root: Path, manifest: dict[str, Any]) -> str:
    """How to rewrite a damaged copy: the dataset's own command (keys too for a non-default copy)."""
    name = manifest.get("name", "NAME")
    keys = "" if Path(root).name == name else " with this run's dataset keys"
    return f"re-run `medley prepare {name} --force`{keys}"


def shard_problems(root: Path, manifest: dict[str, Any], split: str, mode: str = "sha256") -> dict[str, str]:
    """``{file: what is wrong}`` for the shards of ``split`` that differ from the manifest.

    ``mode="size"`` only stats (missing, other size: cheap on any filesystem); ``"sha256"``
    also hashes, once per (file, size, mtime); ``"none"`` checks nothing.
    """
    problems: dict[str, str] = {}
    if mode == "none":
        return problems
    manifest_path = Path(root) / MANIFEST
    for shard in manifest["splits"][split]["shards"]:
        if is_remote(shard["file"]):
            continue  # nothing to stat without reading it: its sha256 is checked while it is read
        path = Path(root) / shard["file"]
        try:
            st = path.stat()
        except OSError as exc:
            why = "is missing" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})"
            problems[shard["file"]] = f"{why}, listed in {manifest_path}"
            continue
        size = shard.get("bytes")
        if size is not None and st.st_size != size:
            problems[shard["file"]] = f"has {st.st_size} bytes, the manifest {manifest_path} says {size}"
        elif mode == "sha256" and not _sha256_matches(path, st, shard["sha256"]):
            problems[shard["file"]] = f"does not match the sha256 in {manifest_path}"
    return problems


def _sha256_matches(path: Path, st: os.stat_result, digest: str) -> bool:
    key = (str(path), st.st_size, st.st_mtime_ns, digest)
    if key in _VERIFIED:
        return True
    if _sha256(path) != digest:
        return False
    _VERIFIED.add(key)
    return True


def verify_shards(
    root: Path,
    manifest: dict[str, Any],
    split: str | None = None,
    mode: str = "sha256",
    on_error: str = "raise",
) -> dict[str, str]:
    """Check the shards (and the index) of ``split`` (all splits: None) against the manifest.

    A missing shard, or one whose size (``mode="size"``) or sha256 (``"sha256"``) differs,
    raises naming it with ``on_error="raise"``; with ``"skip"`` it is returned as
    ``{file: what is wrong}`` for the reader to count as lost. A changed index always raises:
    random access through it cannot skip.
    """
    refused: dict[str, str] = {}
    if mode == "none":
        return refused
    hint = reprepare_hint(root, manifest)
    for name, entry in manifest["splits"].items():
        if split is not None and name != split:
            continue
        for file, why in shard_problems(root, manifest, name, mode).items():
            if on_error == "raise":
                raise ValueError(f"shard {Path(root) / file} {why}; {hint}")
            refused[file] = why
        index = entry.get("index")
        path = Path(root) / index["file"] if index else None
        if mode == "sha256" and path is not None and path.exists():
            if not _sha256_matches(path, path.stat(), index["sha256"]):
                raise ValueError(
                    f"index {path} of split '{name}' does not match the sha256 in "
                    f"{Path(root) / MANIFEST}; {hint}"
                )
    return refused


# ----------------------------------------------------------------------------------- reading
def _parse_header(block: bytes) -> tuple[str, int, bytes]:
    """(name, size, typeflag) of a tar header block; ValueError on a bad checksum."""
    stored = block[148:156].split(b"\0")[0].strip()
    actual = sum(block) - sum(block[148:156]) + 8 * 32
    if not stored or int(stored, 8) != actual:
        raise ValueError("bad tar header checksum")
    name = block[0:100].split(b"\0")[0].decode()
    prefix = block[345:500].split(b"\0")[0].decode() if block[257:262] == b"ustar" else ""
    size_field = block[124:136]
    if size_field[0] & 0x80:  # GNU base-256 size
        size = int.from_bytes(size_field[1:], "big")
    else:
        size = int(size_field.split(b"\0")[0].strip() or b"0", 8)
    return (f"{prefix}/{name}" if prefix else name), size, block[156:157]


def _members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of every regular file member; stops at the end marker or EOF."""
    long_name = None
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            if block:
                raise ValueError("truncated tar header")
            return
        if block == b"\0" * BLOCK:
            return
        name, size, kind = _parse_header(block)
        payload = f.read(size)
        if len(payload) < size:
            raise ValueError(f"unexpected end of data in member {name}")
        f.read(-size % BLOCK)
        if kind == b"L":  # GNU long name for the next member
            long_name = payload.split(b"\0")[0].decode()
            continue
        if kind in (b"x", b"g", b"5"):  # pax headers, directories
            continue
        yield (long_name or name), payload
        long_name = None


def _group(members: Iterator[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """Members → samples (consecutive members sharing a key). When the stream breaks, a
    pending sample that already has its ``json`` (written last) is complete and is yielded
    before the error propagates."""
    current: dict[str, Any] = {}
    try:
        for name, payload in members:
            base = name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = payload
    except Exception:
        if "json" in current:
            yield current
        raise
    if current:
        yield current


def open_shard(location: Path | str) -> BinaryIO:
    """A binary stream of a shard: a local file, or ``webdataset``'s ``gopen`` for a URL / ``pipe:``."""
    if is_remote(location):
        from webdataset.gopen import gopen

        return gopen(str(location), "rb")
    return open(location, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by iter_raw_samples


class _Hashing:
    """A read-through stream that hashes every byte read."""

    def __init__(self, f: BinaryIO):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _abandon(f: Any) -> None:
    """Close a stream left before its end; a ``pipe:``/URL reader's process is stopped first, and
    its exit status (killed) is not an error here."""
    proc = getattr(f, "proc", None)
    try:
        if proc is not None and proc.poll() is None:
            proc.kill()
        f.close()
    except Exception:  # noqa: BLE001 - the reader was abandoned on purpose
        pass


def iter_raw_samples(path: Path | str, expected: int | None = None, sha256: str | None = None) -> Iterator[dict[str, Any]]:
    """Group a shard's members by key without decoding (cheap enough to replay on resume).

    ``path`` is a local file or a URL (``shard_location``). Raises ``ShardError`` naming the shard
    when it is missing, unreadable, ends inside a sample, or (with ``expected``) holds a different
    number of samples than its manifest entry. With ``sha256`` (remote shards), the bytes read
    are hashed and a mismatch raises once the whole shard has been read.
    """
    good = 0
    try:
        f = open_shard(path)
    except (OSError, ValueError) as exc:
        raise ShardError(path, good, f"{type(exc).__name__}: {exc}") from exc
    stream = _Hashing(f) if sha256 else f
    finished = False
    try:
        try:
            for raw in _group(_members(stream)):
                if "json" not in raw:
                    raise ValueError(f"sample {raw['__key__']} has no json member")
                good += 1
                yield raw
            if sha256:
                while stream.read(1 << 20):  # the end-of-archive blocks are part of the hashed file
                    pass
            finished = True
        finally:
            if finished:
                f.close()  # a pipe's exit status is checked here
            else:
                _abandon(f)
        if sha256 and stream.h.hexdigest() != sha256:
            raise ValueError(f"the bytes read do not match the manifest's sha256 ({good} samples were read)")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ShardError(path, good, f"{type(exc).__name__}: {exc}") from exc
    if expected is not None and good != expected:
        raise ShardError(
            path, good, f"holds {good} samples, the manifest says {expected} (truncated or corrupt)"
        )


def read_sample_at(f: BinaryIO, offset: int, length: int, path: Path | str = "?") -> dict[str, Any]:
    """The raw sample stored at ``offset`` (random access through the split index)."""
    f.seek(offset)
    data = f.read(length)
    try:
        if len(data) < length:
            raise ValueError("unexpected end of file")
        samples = list(_group(_members(io.BytesIO(data))))
        if len(samples) != 1 or "json" not in samples[0]:
            raise ValueError("index entry does not hold one complete sample")
    except ValueError as exc:
        raise ShardError(path, 0, f"offset {offset}: {exc}") from exc
    return samples[0]


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def load_npy(payload: bytes) -> np.ndarray:
    """``np.load`` for a ``.npy`` payload, with its header parsed once per distinct header
    (``np.load`` spends most of its time parsing the same header again; read-only result)."""
    if payload[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy payload")
    size = 2 if payload[6] == 1 else 4
    start = 8 + size + int.from_bytes(payload[8 : 8 + size], "little")
    header = payload[:start]
    if header not in _NPY_HEADERS:
        arr = np.load(io.BytesIO(payload), allow_pickle=False)
        if arr.dtype.hasobject or arr.flags.f_contiguous and arr.ndim > 1 and not arr.flags.c_contiguous:
            return arr
        _NPY_HEADERS[header] = (arr.dtype, arr.shape, arr.size)
        if len(_NPY_HEADERS) > 4096:
            _NPY_HEADERS.clear()
    dtype, shape, count = _NPY_HEADERS[header]
    return np.frombuffer(payload, dtype, count=count, offset=start).reshape(shape)


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(raw["json"])
    for ext, payload in raw.items():
        if ext.endswith(".npy"):
            out[ext[:-4]] = load_npy(payload)
    return out


def load_index(root: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    with np.load(Path(root) / entry["index"]["file"]) as z:
        return {k: z[k] for k in z.files}
