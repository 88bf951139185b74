"""Inference cost accounting: parameters, FLOPs and peak activation memory, checked by hand."""

from __future__ import annotations

import torch
from torch import nn

from framework.metrics.cost import count_parameters, forward_flops, inference_cost, peak_activation_bytes


def test_mlp_cost_matches_the_hand_count():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    cost = inference_cost(model, torch.rand(2, 8))
    assert cost["params"] == 8 * 16 + 16 + 16 * 4 + 4
    assert cost["flops"] == 2 * 2 * 8 * 16 + 2 * 2 * 16 * 4
    # Linear1's output (2x16 floats = 128 B) and ReLU's output are alive together; then 128 + 32
    assert cost["peak_activation_bytes"] == 256


def test_in_place_activation_does_not_count_twice():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 4))
    assert peak_activation_bytes(model.eval(), torch.rand(2, 8)) == 128 + 32


def test_conv_flops_and_peak_memory():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    assert forward_flops(model, torch.rand(1, 1, 8, 8)) == 2 * 4 * 9 * 64
    assert peak_activation_bytes(model, torch.rand(1, 1, 8, 8)) == 2 * 4 * 64 * 4


def test_tied_weights_count_once_and_cost_leaves_the_training_mode_alone():
    a = nn.Linear(4, 4)
    model = nn.Sequential(a, a).train()
    assert count_parameters(model) == 20
    inference_cost(model, torch.rand(1, 4))
    assert model.training


def test_gradsplit_costs_what_the_hard_shared_network_costs():
    from tests.helpers.gradsplit_workers import ASYM, split_net

    model = split_net(ASYM)
    x = torch.rand(1, 1, 16, 16)
    assert inference_cost(model, x) == inference_cost(model.net, x)
