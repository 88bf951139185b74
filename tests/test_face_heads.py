"""CosFace / ArcFace heads: per-sample margins, the ArcFace fallback, fp32 logits."""

import math

import torch

from algorithms._face.heads import MarginHead, margin_logits, margin_loss, target_with_margin


def _cos(b=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, c, generator=g) * 2 - 1).clamp(-0.999, 0.999), torch.randint(0, c, (b,), generator=g)


def test_cosface_with_equal_per_sample_margins_equals_the_scalar_version():
    cos, y = _cos()
    scalar = margin_logits(cos, y, 0.35, 64.0, "cosface")
    vector = margin_logits(cos, y, torch.full((len(y),), 0.35), 64.0, "cosface")
    reference = 64.0 * (cos - 0.35 * torch.nn.functional.one_hot(y, cos.shape[1]))
    torch.testing.assert_close(vector, scalar)
    torch.testing.assert_close(scalar, reference)


def test_arcface_with_equal_per_sample_margins_equals_the_scalar_version():
    cos, y = _cos(seed=1)
    m = 0.5
    scalar = margin_logits(cos, y, m, 64.0, "arcface")
    vector = margin_logits(cos, y, torch.full((len(y),), m), 64.0, "arcface")
    # reference from the angle: cos(θ + m), or cos θ − m·sin m where θ + m would pass π
    theta = torch.acos(cos)
    target = torch.where(theta + m < math.pi, torch.cos(theta + m), cos - m * math.sin(m))
    onehot = torch.nn.functional.one_hot(y, cos.shape[1]).bool()
    reference = 64.0 * torch.where(onehot, target, cos)
    torch.testing.assert_close(vector, scalar)
    torch.testing.assert_close(scalar, reference, atol=1e-4, rtol=1e-5)


def test_arcface_fallback_keeps_the_target_monotone_in_the_angle():
    theta = torch.linspace(0, math.pi, 2001)
    target = target_with_margin(torch.cos(theta).clamp(-1 + 1e-7, 1 - 1e-7), torch.full_like(theta, 0.5), "arcface")
    assert (target[1:] <= target[:-1] + 1e-6).all()
    # without the fallback cos(θ + m) would rise again past θ = π − m
    assert torch.cos(theta[-1] + 0.5) > torch.cos(theta[-200] + 0.5)


def test_per_sample_margins_act_row_by_row():
    cos, y = _cos(b=4, seed=2)
    margins = torch.tensor([0.1, 0.2, 0.3, 0.4])
    for kind in ("cosface", "arcface"):
        together = margin_logits(cos, y, margins, 30.0, kind)
        for i in range(4):
            alone = margin_logits(cos[i:i + 1], y[i:i + 1], float(margins[i]), 30.0, kind)
            torch.testing.assert_close(together[i:i + 1], alone)


def test_cosface_loss_matches_a_hand_computed_value():
    # two classes, cos = [0.6, 0.2], label 0, s = 2, m = 0.1: logits [1.0, 0.4]
    cos, y = torch.tensor([[0.6, 0.2]]), torch.tensor([0])
    loss = margin_loss(margin_logits(cos, y, 0.1, 2.0, "cosface"), y)
    expected = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.4)))
    assert abs(float(loss) - expected) < 1e-6


def test_unlabelled_rows_get_no_margin_and_no_loss():
    cos, y = _cos(b=3, seed=3)
    y[1] = -1
    logits = margin_logits(cos, y, 0.35, 10.0, "cosface")
    torch.testing.assert_close(logits[1], 10.0 * cos[1])
    full = margin_loss(logits, y)
    kept = margin_loss(logits[[0, 2]], y[[0, 2]])
    torch.testing.assert_close(full, kept)


def test_head_logits_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    head = MarginHead(8, 5, scale=64.0, margin=0.35)
    emb, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    reference = head(emb, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(emb.bfloat16(), y)
        loss = head.loss(emb, y)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=0.5, rtol=0.02)  # bf16 input rounding only
