"""PCGrad baseline: the projection by hand, and one training step against a direct implementation."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from algorithms.pcgrad import PCGradConfig
from algorithms.pcgrad.losses import count_conflicts, pcgrad_weights
from algorithms.pcgrad.method import PCGrad
from tests.helpers.gradsplit_workers import TASKS, data_info, model_config, multi_source_batch


def test_two_conflicting_gradients_project_onto_each_others_normal_plane():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    g = torch.stack([g1, g2])
    gram = (g @ g.t()).double()
    # g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1); sum = (0.5, 1.5) = 2 g1 + 1.5 g2
    w = pcgrad_weights(gram, [[0, 1], [1, 0]])
    assert w.tolist() == [2.0, 1.5]
    assert count_conflicts(gram) == 1
    assert pcgrad_weights((torch.eye(2) * 2).double(), [[0, 1], [1, 0]]).tolist() == [1.0, 1.0]


class StepRecorder:
    """The slice of ``ctx`` a manual-optimization step uses; backward is a plain backward."""

    def __init__(self):
        self.world_size, self.global_step, self.logs = 1, 0, {}
        self.config = SimpleNamespace(trainer=SimpleNamespace(seed=0))

    def backward(self, loss):
        loss.backward()

    def step(self, name):
        self.stepped = name

    def log(self, name, value, reduce="mean"):
        self.logs[name] = value

    def unwrap(self, model):
        return model


def test_one_step_applies_summed_projected_gradients_to_the_backbone_and_plain_ones_to_heads():
    info = data_info()
    alg = PCGrad(
        PCGradConfig(),
        SimpleNamespace(model=model_config(), trainer=SimpleNamespace(accumulate_grad_batches=1)),
    )
    torch.manual_seed(0)
    model = alg.build_model(info).double()
    batch = multi_source_batch(4, seed=3, dtype=torch.float64)
    ctx = StepRecorder()
    alg.training_step(model, batch, ctx)
    got = torch.cat([p.grad.flatten() for p in model.net.backbone.parameters()])

    shared = list(model.net.backbone.parameters())
    out = model(batch["image"])
    from framework.losses import task_losses

    losses = task_losses(out, batch["labels"])
    grads = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
        for t in TASKS
    ]
    orders = alg._orders(ctx)
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j in orders[i]:
            dot = g @ grads[j]
            if j != i and dot < 0:
                g -= dot / grads[j].norm() ** 2 * grads[j]
        projected.append(g)
    torch.testing.assert_close(got, sum(projected), rtol=1e-10, atol=1e-12)
    for t in TASKS:
        head = list(model.net.heads[t].parameters())
        want = torch.autograd.grad(losses[t], head, retain_graph=True)
        for p, w in zip(head, want):
            torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-12)
    assert ctx.stepped == "main" and "pcgrad/conflicts" in ctx.logs
