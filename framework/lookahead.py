"""One functional look-ahead step for meta-learning methods (MAML-style fast weights).

A look-ahead evaluates an outer loss at fast weights Θ' = Θ − α ∇_Θ L_inner, then takes the
gradient of that outer loss back through Θ' — to Θ itself (CDT's meta-test term) or to
meta-parameters that the inner loss depends on but that are not model parameters (learned
per-sample margins or weights, L2RW-style). The model is never modified: Θ' lives in a dict
and the network is run on it with ``torch.func.functional_call``.

Orders. ``second_order=True`` keeps the graph of the inner gradient, so the outer gradient
contains the Hessian term −α H ∇L_outer(Θ') and reaches meta-parameters through ∂∇L_inner/∂φ.
``second_order=False`` builds Θ' from a detached gradient: the outer gradient at Θ is the
plain gradient at Θ' (first-order MAML), and nothing upstream of the inner gradient — meta-
parameters included — receives an outer gradient (``outer_backward`` refuses that case).

Data parallel. Every rank holds part of the batch, so the inner gradient is averaged over
ranks before Θ' is formed and all ranks share one Θ'. The reduction is passed in as a
callable that sums a tensor over ranks in place (e.g. ``lambda t: ctx.all_reduce(t, "sum")``;
``None`` in one process), so this module knows nothing of the trainer. At second order the
sum is differentiable: its backward sums the cotangents of every rank, which is what each
rank's share of the inner gradient receives in the one-process computation. Each rank then
holds the gradient of its own outer loss; averaging those over ranks (``average_grads``,
``outer_backward``) gives exactly the gradient of one process on the whole batch. That
backward is a collective: every rank must run it, even one whose outer loss is zero.

Buffers. ``forward_at`` runs the network on copies of its buffers, so BatchNorm running
statistics are updated by the caller's real passes only — once per batch, however many
look-ahead or recomputed passes a step makes — and tensors saved by a real pass's graph are
never modified in place. The model must be the plain module (``ctx.unwrap(model)``): a data-
parallel wrapper would synchronise the inner gradient as if it were the real one.

Example (a weight per sample, learned so that one look-ahead step lowers a held-out loss;
run by the test suite)::

    import torch
    from framework.lookahead import forward_at, inner_step, outer_backward, trainable

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    log_w = torch.zeros(8, requires_grad=True)           # meta-parameters, not in the model
    x, y, x_meta, y_meta = torch.randn(8, 3), torch.randn(8, 1), torch.randn(4, 3), torch.randn(4, 1)

    inner = (log_w.exp()[:, None] * (net(x) - y) ** 2).mean()
    fast = inner_step(inner, trainable(net), alpha=0.1, second_order=True)   # reduce=None: one process
    outer = ((forward_at(net, fast, x_meta) - y_meta) ** 2).mean()
    outer_backward(outer, {"log_w": log_w})              # log_w.grad; net's .grad untouched
    assert log_w.grad.shape == (8,) and net.weight.grad is None
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.func import functional_call

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over data-parallel ranks


class _SumOverRanks(torch.autograd.Function):
    """A sum over ranks whose backward is again a sum over ranks (every rank's cotangent
    reaches every rank's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        ctx.reduce = reduce
        return reduce(x.detach().clone())  # the reduction works in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.reduce(grad.contiguous().clone()), None


def sum_over_ranks(reduce: Reduce | None) -> Reduce | None:
    """``reduce`` made differentiable where its input has a graph (``None`` stays ``None``)."""
    if reduce is None:
        return None
    return lambda t: _SumOverRanks.apply(t, reduce) if t.requires_grad else reduce(t.clone())


def trainable(model: torch.nn.Module, modules: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The parameters a look-ahead updates, by their ``named_parameters`` names.

    Args:
        modules: submodule names (e.g. ``("neck", "head")``) to restrict the look-ahead to the
            last layers; ``None`` takes every parameter with ``requires_grad``.
    """
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if modules is None:
        return params
    chosen: dict[str, torch.Tensor] = {}
    for name in modules:
        found = {k: p for k, p in params.items() if k == name or k.startswith(f"{name}.")}
        if not found:
            tops = sorted({k.split(".")[0] for k in params})
            raise ValueError(f"lookahead: no trainable parameter under module '{name}'; "
                             f"the model's top-level modules are {tops}")
        chosen.update(found)
    return chosen


def _check_ranks(reduce: Reduce | None, world_size: int) -> None:
    if world_size > 1 and reduce is None:
        raise ValueError(f"lookahead: world_size={world_size} needs a reduce callable that sums over ranks "
                         f"(e.g. lambda t: ctx.all_reduce(t, 'sum')); pass world_size=1 in one process")


def inner_step(loss: torch.Tensor, params: Mapping[str, torch.Tensor], alpha: float, *,
               second_order: bool = True, reduce: Reduce | None = None,
               world_size: int = 1) -> dict[str, torch.Tensor]:
    """Fast weights Θ' = Θ − α · mean over ranks of ∇_Θ ``loss``.

    ``loss`` is this rank's inner loss (a mean over its share of the batch). Its graph is kept
    (the caller usually backpropagates it again, e.g. CDT's λ L_s). A parameter the loss does
    not reach gets a zero gradient, i.e. Θ' = Θ for it.

    Returns:
        ``{name: Θ'}`` for the names of ``params``; pass it to ``forward_at``.
    """
    if not params:
        raise ValueError("lookahead: inner_step got no parameters to update; see trainable(model)")
    _check_ranks(reduce, world_size)
    names, tensors = list(params), list(params.values())
    grads = torch.autograd.grad(loss, tensors, create_graph=second_order, retain_graph=True,
                                allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, tensors)]
    if not second_order:
        grads = [g.detach() for g in grads]
    if reduce is not None and world_size > 1:  # one flat collective for all parameters
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = (sum_over_ranks(reduce) if second_order else reduce)(flat) / world_size
        grads = [piece.view_as(g) for piece, g in zip(torch.split(flat, [g.numel() for g in grads]), grads)]
    return {k: p - alpha * g for k, p, g in zip(names, tensors, grads)}


def forward_at(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` with ``weights`` in place of those parameters (the others as
    they are) and on copies of the buffers, so that the pass changes no running statistic.
    ``forward_at(model, {}, x)`` is a pass at Θ that leaves BatchNorm statistics alone."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    return functional_call(model, {**weights, **buffers}, args, kwargs, strict=False)


def average_grads(params: Iterable[torch.Tensor], reduce: Reduce | None, world_size: int) -> None:
    """``p.grad`` ← its mean over ranks, as one flat all-reduce (a parameter without a gradient
    counts as zero). Needed because a look-ahead runs outside any data-parallel wrapper."""
    _check_ranks(reduce, world_size)
    if reduce is None or world_size == 1:
        return
    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = reduce(torch.cat([g.reshape(-1) for g in grads]).clone()) / world_size
    for p, g in zip(params, torch.split(flat, [p.numel() for p in params])):
        p.grad = g.view_as(p).clone()


def outer_backward(loss: torch.Tensor, meta_params: Mapping[str, torch.Tensor],
                   reduce: Reduce | None = None, world_size: int = 1) -> None:
    """Accumulate ∇ ``loss`` into ``.grad`` of ``meta_params`` only, averaged over ranks.

    Model parameters' ``.grad`` are left untouched, so a method can take the meta gradient and
    then the model's own gradient of a recomputed loss (L2RW's "upgraded" gradient). Every rank
    must call it: at second order its backward runs the inner gradient's collective.
    """
    if not meta_params:
        raise ValueError("lookahead: outer_backward got no meta-parameters")
    names, tensors = list(meta_params), list(meta_params.values())
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    missing = [k for k, g in zip(names, grads) if g is None]
    if missing:
        raise ValueError(f"lookahead: meta-parameters {missing} get no gradient from the outer loss; the "
                         f"inner loss must depend on them and inner_step must run with second_order=True")
    for p, g in zip(tensors, grads):
        p.grad = g if p.grad is None else p.grad + g
    average_grads(tensors, reduce, world_size)
