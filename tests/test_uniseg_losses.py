"""UniSeg's losses on hand-computed tensors: null masking, its gradients, the class-relational targets."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.uniseg.losses import bce_masked, ce_unified, class_relational_bce

# 2 datasets over 5 unified classes: A defines {0, 1, 2}, B defines {0, 3, 4}
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 1, 1]], dtype=torch.bool)
# two images (one per dataset) of 1x2 pixels: 4 pixels, one of them void
LOGITS = torch.tensor([
    [[0.5, -1.0], [2.0, 0.0], [-0.5, 1.5], [3.0, -2.0], [1.0, 0.25]],   # image of A, [K=5, W=2]
    [[-1.5, 0.0], [0.75, 2.5], [1.0, -1.0], [0.0, 2.0], [-2.0, 0.5]],   # image of B
]).unsqueeze(2)  # [B=2, K=5, H=1, W=2]
TARGET = torch.tensor([[[1, 2]], [[4, -1]]])  # A: classes 1 and 2; B: class 4 and a void pixel
DATASET = torch.tensor([0, 1])


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def bce(z: float, t: int) -> float:
    return softplus(z) - t * z


def hand_bce(null: bool) -> float:
    """Σ over labelled pixels and (the pixel's dataset's, if null) classes, / labelled pixels."""
    total, labelled = 0.0, 0
    for b in range(2):
        for w in range(2):
            y = int(TARGET[b, 0, w])
            if y < 0:
                continue
            labelled += 1
            for k in range(5):
                if null and not MASK[DATASET[b], k]:
                    continue
                total += bce(float(LOGITS[b, k, 0, w]), int(k == y))
    return total / labelled


def test_null_masked_bce_equals_the_formula_on_two_datasets_five_classes_four_pixels():
    got = bce_masked(LOGITS, TARGET, MASK[DATASET])
    assert got.item() == pytest.approx(hand_bce(null=True), rel=1e-6)
    # the two pixels of A sum 3 classes each, B's labelled pixel 3: 9 terms over 3 labelled pixels
    assert hand_bce(null=True) != pytest.approx(hand_bce(null=False))


def test_plain_bce_treats_every_class_as_a_negative():
    assert bce_masked(LOGITS, TARGET, None).item() == pytest.approx(hand_bce(null=False), rel=1e-6)


def test_classes_outside_a_pixels_dataset_receive_exactly_zero_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    bce_masked(logits, TARGET, MASK[DATASET]).backward()
    grad = logits.grad
    for b in range(2):
        outside = ~MASK[DATASET[b]]
        assert torch.equal(grad[b, outside], torch.zeros_like(grad[b, outside]))  # exactly, not approximately
    assert (grad[0, MASK[0], 0, :] != 0).all()  # A's classes on A's labelled pixels do learn
    assert torch.equal(grad[1, :, 0, 1], torch.zeros(5))  # the void pixel gives nothing to anyone
    # without null masking the same classes are pushed down
    plain = LOGITS.clone().requires_grad_(True)
    bce_masked(plain, TARGET, None).backward()
    assert (plain.grad[0, 3:, 0, :] > 0).all()


def test_the_denominator_is_the_number_of_labelled_pixels_unless_given():
    base = bce_masked(LOGITS, TARGET, MASK[DATASET])
    assert bce_masked(LOGITS, TARGET, MASK[DATASET], torch.tensor(6.0)).item() == pytest.approx(base.item() / 2)
    ce = ce_unified(LOGITS, TARGET)
    hand = -sum(math.log(torch.softmax(LOGITS[b, :, 0, w], 0)[int(TARGET[b, 0, w])])
                for b, w in ((0, 0), (0, 1), (1, 0))) / 3
    assert ce.item() == pytest.approx(hand, rel=1e-6)


def test_class_relational_bce_with_identity_relations_is_the_null_masked_bce():
    eye = torch.eye(5, dtype=torch.int8)
    rows = torch.where(eye.bool(), 1, torch.where(MASK[:, None, :], 0, -1)).to(torch.int8)  # [D, K, K]
    got = class_relational_bce(LOGITS, TARGET, rows[DATASET])
    assert got.item() == pytest.approx(bce_masked(LOGITS, TARGET, MASK[DATASET]).item(), rel=1e-6)


def test_a_related_class_becomes_a_positive_target_of_the_pixels_it_relates_to():
    """B's class 4 relates to class 2 (A's coarse name): on B's class-4 pixel, class 2 is now a positive."""
    eye = torch.eye(5, dtype=torch.int8)
    rows = torch.where(eye.bool(), 1, torch.where(MASK[:, None, :], 0, -1)).to(torch.int8)
    rows[1, 4, 2] = 1
    got = class_relational_bce(LOGITS, TARGET, rows[DATASET])
    z = lambda b, k, w: float(LOGITS[b, k, 0, w])
    pixel_a0 = sum(bce(z(0, k, 0), int(k == 1)) for k in (0, 1, 2))
    pixel_a1 = sum(bce(z(0, k, 1), int(k == 2)) for k in (0, 1, 2))
    pixel_b0 = bce(z(1, 0, 0), 0) + bce(z(1, 2, 0), 1) + bce(z(1, 3, 0), 0) + bce(z(1, 4, 0), 1)
    assert got.item() == pytest.approx((pixel_a0 + pixel_a1 + pixel_b0) / 3, rel=1e-6)
