"""The overhead benchmark compares like with like: Medley's trainer and the hand-written loop of
``benchmarks/overhead.py`` end with bitwise equal parameters after the same batches from memory."""

from __future__ import annotations

import itertools

import torch

from benchmarks.overhead import MemoryData, data_module, hand_loop, medley_run


def test_trainer_matches_the_hand_written_loop_bitwise_from_memory(compose):
    cfg = compose("algorithm=equal_weight", "trainer.max_steps=6", "trainer.log_every=2", "optim.warmup_steps=2")
    dm = data_module(cfg)
    stream = dm.epoch_batches()
    batches = [next(stream) for _ in range(3)]  # cycled: steps 4-6 reuse them
    trainer = medley_run(cfg, MemoryData(dm, batches), None)
    hand = hand_loop(cfg, dm.info, itertools.cycle(batches), 6)
    ours = trainer.strategy.unwrap(trainer.model).state_dict()
    theirs = hand.state_dict()
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
    # and training moved them: the comparison is not between two untouched initialisations
    torch.manual_seed(cfg.trainer.seed)
    from framework.models import build_multitask

    fresh = build_multitask(cfg.model, dm.info).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in theirs.items() if v.is_floating_point())
