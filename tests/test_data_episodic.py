"""Episodic P×K batches per domain, the balanced auxiliary stream, leave-one-domain-out."""

from __future__ import annotations

import collections

import pytest
import torch

from framework.data.builtin import FacesConfig
from framework.data.module import DataModule
from framework.data.sources import SourceUnavailable

P, K = 3, 3  # the small test copy has 3 training identities in its smallest domains


def _faces(data_root, **kw) -> DataModule:
    cfg = FacesConfig(
        limit=96,
        image_size=32,
        episodic=True,
        episode_p=P,
        episode_k=K,
        batch_size=8,
        aux={"meta": {"split": "meta", "batch_size": 12, "balance": "domain"}},
        **kw,
    )
    try:
        return DataModule(cfg, data_root, seed=0)
    except SourceUnavailable as exc:
        pytest.skip(str(exc))


def test_each_step_holds_p_identities_times_k_images_per_domain(data_root):
    dm = _faces(data_root)
    episodes = dm.epoch_batches()
    for _ in range(5):
        step = next(episodes)
        assert set(step) == {"lfw", "orl", "yale", "eyaleb"}
        for domain, batch in step.items():
            ident = batch["labels"]["identity"]
            assert batch["image"].shape == (P * K, 3, 32, 32)
            blocks = ident.view(P, K)
            assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == P
            assert (batch["domain"] == dm.info.extra["domains"].index(domain)).all()
            lo, hi = dm.info.extra["identity_ranges"][domain]
            assert ((ident >= lo) & (ident < hi)).all()  # disjoint identities per domain


def test_episodes_and_aux_stream_resume_identically(data_root):
    def run(dm, n):
        episodes, meta = dm.epoch_batches(), dm.aux_iterators()["meta"]
        return [
            ({d: b["id"].tolist() for d, b in next(episodes).items()}, next(meta)["id"].tolist())
            for _ in range(n)
        ]

    full = run(_faces(data_root), 6)
    first = _faces(data_root)
    head = run(first, 2)
    second = _faces(data_root)
    second.load_state_dict(first.state_dict())
    assert head + run(second, 4) == full


def test_aux_meta_stream_is_balanced_over_domains(data_root):
    dm = _faces(data_root)
    meta = dm.aux_iterators()["meta"]
    counts = collections.Counter(d for _ in range(40) for d in next(meta)["domain"].tolist())
    assert len(counts) == 4 and max(counts.values()) < 1.5 * min(counts.values())


def test_holdout_domain_is_left_out_of_training_and_its_pairs_are_available(data_root):
    dm = _faces(data_root, holdout_domain="yale")
    assert set(next(dm.epoch_batches())) == {"lfw", "orl", "eyaleb"}
    pairs = dm.verification_pairs("test", "yale")
    assert pairs.dtype == torch.long and pairs.shape[1] == 3 and 0 < pairs[:, 2].sum() < len(pairs)
    ids = {int(i) for b in dm.eval_loader("test") for i, keep in zip(b["id"], b["mask"]) if keep}
    assert set(pairs[:, :2].flatten().tolist()) <= ids


def test_two_ranks_split_one_global_episode_by_identity_blocks(data_root):
    def module(rank, world, p):
        cfg = FacesConfig(limit=96, image_size=32, episodic=True, episode_p=p, episode_k=K, batch_size=8)
        return DataModule(cfg, data_root, seed=0, rank=rank, world=world)

    try:
        whole = next(module(0, 1, 2).epoch_batches())
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    halves = [next(module(r, 2, 2).epoch_batches()) for r in range(2)]
    for domain, batch in whole.items():
        assert torch.equal(torch.cat([h[domain]["id"] for h in halves]), batch["id"])
    with pytest.raises(ValueError, match="episode_p=3 identities per domain do not divide among 2 ranks"):
        module(0, 2, 3)
