"""Face recognition data: any ``<identity>/<image>`` folder of pre-aligned crops is a domain.

``medley prepare faces --src DIR [--domain NAME]`` reads one folder the way CASIA-WebFace and
MS1M are laid out (plus an optional ``metadata.csv`` with a ``path`` column of per-image
attributes); without ``--src`` the ``shared`` preset reads the four real face sets beside
the checkout (``../shared/data``, or ``$MEDLEY_FACES``) as four domains with disjoint
identities: ``lfw``, ``orl``, ``yale``, ``eyaleb`` (each with a crop box for its framing).
Images are centre-cropped, resized to ``image_size`` and stored as ``channels`` channels;
``attributes=[column, ...]`` keeps those ``metadata.csv`` columns as categorical attributes.

Splits are identity-disjoint per domain: ``val_identities`` and ``test_identities`` of each
domain's identities are held out; the rest train (source ``train.<domain>``), except
``meta_per_identity`` images per training identity kept in the ``meta`` split (a held-out
meta set on the training identities, e.g. for MvCoM). Labels: ``identity`` is the index of a
training identity (training identities of all domains are numbered first, domain by domain)
and -1 for held-out identities; every row also carries ``person`` (a global index for every
identity), ``domain`` and ``attrs`` (``light``, ``expression``, ``glasses`` where the metadata
says so, -1 elsewhere).

Synthetic variation factors (``synthetic=[blur, occlusion]``, default none) degrade images at
prepare time and record the level as an attribute, so that a method can be trained on a
skewed factor and tested on a balanced one: a training image is degraded with probability
``synthetic_p_train`` (spread evenly over the non-zero levels), while ``meta``, ``val`` and
``test`` hold every level equally often. ``blur`` level l ≥ 1 is a Gaussian blur of
``blur_sigmas[l-1]`` pixels; ``occlusion`` level 1 is a square patch of ``occlusion_size`` of the
side, of one random grey value, at a random place. Levels and patch draws come from their own
seeded generators, so the rest of the construction (splits, pairs) is the same with or without
them. ``extra["level_counts"][split][attribute]`` counts the rows per level (-1 not counted) and
``extra["identity_counts"]`` the training images per training identity.

Sample ids are unique across all splits. Verification pairs (``pairs.json``, loaded into
``info.extra["pairs"]``): for ``val`` and ``test`` and each domain, ``[id_a, id_b, same]``
rows over that split's sample ids, half positive and half negative, at most
``pairs_per_domain``. Byte-identical files (Yale ships nine such pairs) are never a positive
pair, their twin is never split off into ``meta``, and ``extra["exclude_pairs"]`` lists them
(sample-id pairs) for metrics that score all pairs of a split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from framework.data.builtin.common import finish, write_splits
from framework.data.sources import REPO, SourceUnavailable

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".gif", ".bmp", ".tif", ".tiff"}
# domain: (folder, crop box as fractions left, top, right, bottom of the image)
PRESETS = {
    "shared": {
        "lfw": ("lfw_deepfunneled_min10_first20", (0.27, 0.25, 0.73, 0.71)),
        "orl": ("orl_att_faces", (0.0, 0.09, 1.0, 0.91)),
        "yale": ("yale_faces", (0.29, 0.12, 0.71, 0.68)),
        "eyaleb": ("extended_yale_b_cropped_subset", (0.0, 0.06, 1.0, 0.94)),
    }
}
ATTRIBUTES = {
    "light": ["frontal", "side", "extreme"],
    "expression": ["neutral", "expressive"],
    "glasses": ["no", "yes"],
}
SYNTHETIC = ("blur", "occlusion")


@dataclass
class Face:
    path: Path
    identity: str
    domain: int
    attrs: dict[str, int]
    digest: str
    meta: dict[str, str]


def derived_attrs(row: dict[str, str]) -> dict[str, int]:
    """Variation levels from the metadata columns of the shipped sets (unknown: left out)."""
    out: dict[str, int] = {}
    cond = row.get("condition", "")
    if "factor" in row:  # Yale
        out["light"] = 1 if cond in ("leftlight", "rightlight") else 0
        out["expression"] = 1 if row.get("factor") == "expression" else 0
        if cond in ("glasses", "noglasses"):
            out["glasses"] = int(cond == "glasses")
    if row.get("azimuth_deg", "") != "":  # Extended Yale B
        az, el = abs(float(row["azimuth_deg"])), float(row["elevation_deg"])
        out["light"] = 0 if az <= 20 and abs(el) <= 20 else (1 if az <= 70 and el <= 45 else 2)
    return out


def scan(folder: Path, domain: int) -> list[Face]:
    if not folder.is_dir():
        raise SourceUnavailable(f"face folder {folder} does not exist")
    meta: dict[str, dict[str, str]] = {}
    if (folder / "metadata.csv").exists():
        with open(folder / "metadata.csv", newline="") as f:
            meta = {row["path"]: row for row in csv.DictReader(f) if "path" in row}
    faces = []
    for ident in sorted(p for p in folder.iterdir() if p.is_dir()):
        for img in sorted(p for p in ident.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            rel = f"{ident.name}/{img.name}"
            digest = hashlib.sha1(img.read_bytes()).hexdigest()
            row = meta.get(rel, {})
            faces.append(Face(img, ident.name, domain, derived_attrs(row), digest, row))
    if not faces:
        raise SourceUnavailable(f"face folder {folder} holds no <identity>/<image> files")
    return faces


def load_face(
    path: Path, box: tuple[float, float, float, float] | None, size: int, channels: int
) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        w, h = im.size
        if box is not None:
            im = im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
        w, h = im.size
        side = min(w, h)
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        arr = np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)) if channels == 3 else arr


def synthetic_levels(cfg) -> dict[str, list[str]]:
    """Level names of the configured synthetic factors (level 0: untouched)."""
    unknown = [f for f in cfg.synthetic if f not in SYNTHETIC]
    if unknown:
        raise ValueError(f"data.synthetic: {unknown} not among {list(SYNTHETIC)}")
    names = {"blur": ["none"] + [f"sigma{s:g}" for s in cfg.blur_sigmas], "occlusion": ["none", "occluded"]}
    return {f: names[f] for f in cfg.synthetic}


def draw_levels(n: int, levels: int, p_degraded: float | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` levels: level 0 with probability 1 − ``p_degraded`` and the rest evenly over the others;
    ``p_degraded=None``: every level equally often (shuffled), the balanced evaluation design."""
    if p_degraded is None:
        return rng.permutation(np.arange(n) % levels)
    p = np.full(levels, p_degraded / (levels - 1))
    p[0] = 1.0 - p_degraded
    return rng.choice(levels, size=n, p=p)


def degrade(img: np.ndarray, levels: dict[str, int], cfg, rng: np.random.Generator) -> np.ndarray:
    """``img`` (uint8, [H, W] or [C, H, W]) blurred and/or occluded at the given levels."""
    from scipy.ndimage import gaussian_filter

    out = img.astype(np.float32)
    if levels.get("blur", 0) > 0:
        sigma = float(cfg.blur_sigmas[levels["blur"] - 1])
        out = gaussian_filter(out, sigma=(0, sigma, sigma) if out.ndim == 3 else sigma, mode="nearest")
    if levels.get("occlusion", 0) > 0:
        h, w = out.shape[-2:]
        side = max(1, round(cfg.occlusion_size * min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out[..., top : top + side, left : left + side] = float(rng.integers(0, 256))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def level_counts(faces: list[Face], names: list[str]) -> dict[str, list[int]]:
    """Rows per level of every attribute (unknown levels are not counted)."""
    out = {}
    for name in names:
        values = [f.attrs[name] for f in faces if f.attrs.get(name, -1) >= 0]
        out[name] = np.bincount(values, minlength=1).tolist() if values else []
    return out


def domain_folders(cfg) -> list[tuple[str, Path, tuple | None]]:
    if cfg.src:
        names = list(cfg.domains) or [Path(s).name for s in cfg.src]
        if len(names) != len(cfg.src):
            raise ValueError(f"data.domains: {len(names)} names for {len(cfg.src)} src folders")
        return [(n, Path(s).expanduser(), None) for n, s in zip(names, cfg.src)]
    if cfg.preset not in PRESETS:
        raise ValueError(f"data.preset: '{cfg.preset}' is not one of {list(PRESETS)} (or pass src=[DIR])")
    root = Path(
        cfg.faces_root or os.environ.get("MEDLEY_FACES") or REPO.parent / "shared" / "data"
    ).expanduser()
    if not root.is_dir():
        raise SourceUnavailable(
            f"the face sets of preset '{cfg.preset}' are expected in {root} "
            "(set MEDLEY_FACES or faces_root, or prepare with --src DIR)"
        )
    chosen = list(cfg.domains) or list(PRESETS[cfg.preset])
    return [(d, root / PRESETS[cfg.preset][d][0], PRESETS[cfg.preset][d][1]) for d in chosen]


def split_identities(names: list[str], cfg, rng: np.random.Generator) -> dict[str, list[str]]:
    names = list(rng.permutation(names))
    n = len(names)
    n_test = max(1, round(cfg.test_identities * n)) if n >= 3 else 0
    n_val = max(1, round(cfg.val_identities * n)) if n >= 5 else 0
    return {"test": names[:n_test], "val": names[n_test : n_test + n_val], "train": names[n_test + n_val :]}


def verification_pairs(
    ids: np.ndarray, persons: np.ndarray, digests: list[str], cap: int, rng: np.random.Generator
) -> list[list[int]]:
    """Half positive (same person, different file content), half negative pairs of sample ids."""
    pos = [
        (a, b)
        for a in range(len(ids))
        for b in range(a + 1, len(ids))
        if persons[a] == persons[b] and digests[a] != digests[b]
    ]
    n = min(len(pos), cap // 2)
    pos = [pos[i] for i in rng.choice(len(pos), size=n, replace=False)] if n else []
    neg: set[tuple[int, int]] = set()
    tries = 0
    while len(neg) < n and tries < 50 * n:
        a, b = sorted(rng.choice(len(ids), size=2, replace=False))
        if persons[a] != persons[b]:
            neg.add((int(a), int(b)))
        tries += 1
    rows = [[int(ids[a]), int(ids[b]), 1] for a, b in pos] + [
        [int(ids[a]), int(ids[b]), 0] for a, b in sorted(neg)
    ]
    return [rows[i] for i in rng.permutation(len(rows))]


def add_metadata_attributes(faces: list[Face], columns: list[str]) -> dict[str, list[str]]:
    """Categorical attributes from chosen ``metadata.csv`` columns (levels: sorted values)."""
    levels = {c: sorted({f.meta[c] for f in faces if f.meta.get(c, "") != ""}) for c in columns}
    for f in faces:
        for c in columns:
            if f.meta.get(c, "") != "":
                f.attrs[c] = levels[c].index(f.meta[c])
    return levels


def prepare(cfg, out_dir: Path, limit: int | None = None) -> Path:
    rng = np.random.default_rng(cfg.seed)
    folders = domain_folders(cfg)
    domains = [d for d, _, _ in folders]
    boxes = {i: box for i, (_, _, box) in enumerate(folders)}
    by_split: dict[str, list[Face]] = {"train": [], "meta": [], "val": [], "test": []}
    roles: dict[tuple[int, str], str] = {}
    scanned = [scan(folder, d) for d, (_, folder, _) in enumerate(folders)]
    attributes = {
        **ATTRIBUTES,
        **add_metadata_attributes([f for fs in scanned for f in fs], list(cfg.attributes)),
    }
    for d, faces in enumerate(scanned):
        idents = list(dict.fromkeys(f.identity for f in faces))
        if limit:  # the first identities, up to about `limit` images
            keep, total = [], 0
            for ident in idents:
                if total >= limit:
                    break
                keep.append(ident)
                total += sum(f.identity == ident for f in faces)
            idents = keep
            faces = [f for f in faces if f.identity in set(keep)]
        for role, names in split_identities(idents, cfg, rng).items():
            for name in names:
                roles[(d, name)] = role
        digest_count: dict[str, int] = {}
        for f in faces:
            digest_count[f.digest] = digest_count.get(f.digest, 0) + 1
        for ident in idents:
            mine = [f for f in faces if f.identity == ident]
            role = roles[(d, ident)]
            if role == "train" and cfg.meta_per_identity and len(mine) >= 3:
                unique = [i for i, f in enumerate(mine) if digest_count[f.digest] == 1]
                chosen = set(
                    rng.choice(unique, size=min(cfg.meta_per_identity, len(unique)), replace=False).tolist()
                )
                by_split["meta"] += [f for i, f in enumerate(mine) if i in chosen]
                mine = [f for i, f in enumerate(mine) if i not in chosen]
            by_split[role] += mine

    synthetic = synthetic_levels(cfg)
    attributes.update(synthetic)
    level_rng = np.random.default_rng([cfg.seed, 0x5E7])  # its own stream: splits and pairs stay the same
    for split, faces in by_split.items():
        for name, names in synthetic.items():
            p = cfg.synthetic_p_train if split == "train" else None
            for f, level in zip(faces, draw_levels(len(faces), len(names), p, level_rng)):
                f.attrs[name] = int(level)

    order = {r: [k for k, v in roles.items() if v == r] for r in ("train", "val", "test")}
    person_index = {k: i for i, k in enumerate(order["train"] + order["val"] + order["test"])}
    n_train_ids = len(order["train"])
    pixels: dict[str, np.ndarray] = {}

    def image(f: Face) -> np.ndarray:
        if str(f.path) not in pixels:
            pixels[str(f.path)] = load_face(f.path, boxes[f.domain], cfg.image_size, cfg.channels)
        return pixels[str(f.path)]

    def sample(f: Face, i: int) -> dict:
        person = person_index[(f.domain, f.identity)]
        labels = {"identity": person} if person < n_train_ids else {}  # held-out identities: unlabelled
        pixels_of = image(f)
        if synthetic and any(f.attrs.get(n, 0) > 0 for n in synthetic):  # seeded by the sample id
            pixels_of = degrade(pixels_of, f.attrs, cfg, np.random.default_rng([cfg.seed, 0x0CC, i]))
        return {
            "image": pixels_of,
            "id": i,
            "labels": labels,
            "person": person,
            "domain": f.domain,
            "attrs": dict(f.attrs),
        }

    splits, pairs, offset = {}, {}, 0
    for d, name in enumerate(domains):
        faces = [f for f in by_split["train"] if f.domain == d]
        faces = [faces[i] for i in rng.permutation(len(faces))]
        splits[f"train.{name}"] = (
            len(faces),
            lambda fs=faces, o=offset: (sample(f, o + i) for i, f in enumerate(fs)),
        )
        offset += len(faces)
    exclude = []  # byte-identical files in the same split, by sample id (never a positive pair)
    for split in ("meta", "val", "test"):
        faces = [by_split[split][i] for i in rng.permutation(len(by_split[split]))]
        splits[split] = (len(faces), lambda fs=faces, o=offset: (sample(f, o + i) for i, f in enumerate(fs)))
        first_by_digest: dict[str, int] = {}
        for i, f in enumerate(faces):
            if f.digest in first_by_digest:
                exclude.append([first_by_digest[f.digest], offset + i])
            first_by_digest.setdefault(f.digest, offset + i)
        if split != "meta":
            pairs[split] = {}
            for d, name in enumerate(domains):
                rows = [i for i, f in enumerate(faces) if f.domain == d]
                persons = np.array([person_index[(faces[i].domain, faces[i].identity)] for i in rows])
                pairs[split][name] = verification_pairs(
                    np.array(rows) + offset,
                    persons,
                    [faces[i].digest for i in rows],
                    cfg.pairs_per_domain,
                    rng,
                )
        offset += len(faces)
    splits = {k: v for k, v in splits.items() if v[0] > 0}
    written = write_splits(out_dir, splits, cfg.min_shards)
    (out_dir / "pairs.json").write_text(json.dumps(pairs))
    names = [f"{domains[d]}/{ident}" for d, ident in order["train"]]
    sources = {
        name: {"split": f"train.{name}", "domain": d}
        for d, name in enumerate(domains)
        if f"train.{name}" in written
    }
    ranges, start = {}, 0
    for d, name in enumerate(domains):
        n = sum(1 for dd, _ in order["train"] if dd == d)
        ranges[name] = [start, start + n]
        start += n
    return finish(
        out_dir,
        cfg.name,
        {"identity": names},
        (cfg.channels, cfg.image_size, cfg.image_size),
        written,
        f"face folders: {', '.join(str(p) for _, p, _ in folders)}",
        sources=sources,
        episodes={"group": "identity"},
        extra={
            "domains": domains,
            "attributes": attributes,
            "pairs_file": "pairs.json",
            "exclude_pairs": exclude,
            "pairs_sha256": hashlib.sha256((out_dir / "pairs.json").read_bytes()).hexdigest(),
            "train_identities": n_train_ids,
            "identity_ranges": ranges,
            "persons": len(person_index),
            "held_out_persons": {s: sum(1 for v in roles.values() if v == s) for s in ("val", "test")},
            "level_counts": {
                **{
                    f"train.{name}": level_counts([f for f in by_split["train"] if f.domain == d], list(attributes))
                    for d, name in enumerate(domains)
                },
                **{split: level_counts(by_split[split], list(attributes)) for split in ("meta", "val", "test")},
            },
            "identity_counts": [
                sum(1 for f in by_split["train"] if (f.domain, f.identity) == key) for key in order["train"]
            ],
        },
    )
