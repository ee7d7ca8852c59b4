"""Projected gradient descent (PGD, Madry et al.) on the cross-entropy, for l_inf, l_2 and l_1.

The cheap attack of the evaluation (LB) and the inner maximisation of adversarial training
(Sec. 5 of the paper: 50% of each batch adversarial; AT-(l1,l2,l∞) keeps, per example, the
norm with the highest loss).

- l_inf, l_2: ``torchattacks.PGD`` / ``torchattacks.PGDL2``.
- l_1: no library on this stack has an l_1 PGD (torchattacks has none; pyautoattack's l_1
  APGD is the strong, adaptive attack of :mod:`mmru.attacks.evaluate`), so it is written here,
  after the sparse l_1 descent (SLIDE) of Tramèr & Boneh, the paper's reference [32]: each
  step moves along the gradient restricted to its largest 1% of coordinates (skipping those
  the [0,1] box blocks), scaled to l_1 length ``step_size``, then projects exactly onto
  (l_1 ball) ∩ box with pyautoattack's ``L1_projection``. SLIDE steps along the signs of
  those coordinates instead; keeping the magnitudes lets the projection concentrate the
  perturbation on the best coordinates, so on a linear model the attack reaches the exact
  l_1 distance (a vertex of the ball), where equal-sized sign steps stall at the top-k average.

Every attack here takes gradients with respect to the input only (``torch.autograd.grad``),
so parameters' ``.grad`` and ``requires_grad`` are never touched; the network runs in eval
mode during the attack and every module's train/eval flag is restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torchattacks
from pyautoattack.autopgd_base import L1_projection
from torch import nn

from mmru.attacks.geometry import as_p, snap_to_ball

#: fraction of coordinates an l_1 step moves (Tramèr & Boneh's SLIDE moves the top 1-20%)
L1_STEP_SPARSITY = 0.01


@contextlib.contextmanager
def attack_mode(net: nn.Module) -> Iterator[None]:
    """Run ``net`` in eval mode with autograd on; restore every module's mode on exit.

    Autograd is needed for input gradients even when the caller evaluates under
    ``torch.no_grad()``. torchattacks restores only ``net.train()`` as a whole, and only when
    it was in train mode; saving each module's flag restores mixed modes too.
    """
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def default_step_size(eps: float, steps: int, p: float) -> float:
    """l_inf, l_2: 2.5 eps / steps, enough to cross the ball from any start (Madry et al.).

    l_1: eps. The exact projection onto the l_1 ball soft-thresholds the perturbation, so
    steps as long as the radius let it keep only the best coordinates: on a linear model
    this reaches the exact l_1 distance, which steps of 2.5 eps / steps miss by ~50%
    (tested); on cnn_small / MNIST both found as many counterexamples (measured).
    """
    return eps if p == 1.0 else 2.5 * eps / steps


def pgd(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    p: float | int | str,
    steps: int,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
) -> torch.Tensor:
    """Maximise the cross-entropy of ``net`` over {x' : ||x' - x||_p <= eps, x' in [0,1]^d}.

    Batched; returns a detached tensor like x, strictly inside the ball and the box
    (:func:`snap_to_ball`). With ``restarts > 1`` the later runs attack only the points still
    classified correctly, and each point keeps a misclassified iterate if a run found one,
    else the one with the highest loss.
    """
    p = as_p(p)
    step_size = default_step_size(eps, steps, p) if step_size is None else step_size
    x, y = x.detach(), y.detach()
    with attack_mode(net):
        best = _pgd_run(net, x, y, eps, p, steps, step_size, random_start)
        if restarts > 1:
            best_loss, fooled = _loss_and_fooled(net, best, y)
            for _ in range(restarts - 1):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                cand = _pgd_run(net, x[todo], y[todo], eps, p, steps, step_size, random_start)
                loss, cand_fooled = _loss_and_fooled(net, cand, y[todo])
                better = cand_fooled | (loss > best_loss[todo])
                idx = todo[better]
                best[idx] = cand[better]
                best_loss[idx] = loss[better]
                fooled[idx] = cand_fooled[better]
    return best


def _pgd_run(net, x, y, eps, p, steps, step_size, random_start) -> torch.Tensor:
    """One PGD run from one (random) start, snapped into the ball."""
    if p == 1.0:
        x_adv = _sparse_l1_descent(net, x, y, eps, steps, step_size, random_start)
    else:
        x_adv = _torchattacks_pgd(net, x, y, eps, p, steps, step_size, random_start)
    return snap_to_ball(x, x_adv, eps, p)


def as_image_model(net: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """``net`` and ``x`` as a model of 4-d (B, C, H, W) inputs, the shape attack libraries assume
    (torchattacks' PGDL2 reshapes per-example norms to (B, 1, 1, 1)): other inputs become
    (B, 1, 1, d) views."""
    if x.dim() == 4:
        return net, x
    return _Unflatten(net, x.shape[1:]), x.reshape(len(x), 1, 1, -1)


def _torchattacks_pgd(net, x, y, eps, p, steps, step_size, random_start) -> torch.Tensor:
    model, xs = as_image_model(net, x)
    cls = torchattacks.PGD if p == math.inf else torchattacks.PGDL2
    atk = cls(model, eps=eps, alpha=step_size, steps=steps, random_start=random_start)
    return atk(xs, y).reshape(x.shape).detach()


class _Unflatten(nn.Module):
    """Presents ``net`` to torchattacks as a model of (B, 1, 1, d) inputs."""

    def __init__(self, net: nn.Module, shape: torch.Size):
        super().__init__()
        self.net = net
        self.shape = tuple(shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(len(z), *self.shape))


def _sparse_l1_descent(net, x, y, eps, steps, step_size, random_start) -> torch.Tensor:
    """Steps of l_1 length ``step_size`` along the gradient's top coordinates, then projection."""
    flat = x.flatten(1)
    k = max(1, math.ceil(L1_STEP_SPARSITY * flat.shape[1]))
    delta = _random_l1_start(flat, eps) if random_start else torch.zeros_like(flat)
    for _ in range(steps):
        delta.requires_grad_(True)
        # summed, not averaged: a per-example gradient must not shrink with the batch size
        loss = F.cross_entropy(net((flat + delta).view_as(x)), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            x_cur = flat + delta
            # a coordinate at the box face it would move through cannot help: skip it
            blocked = ((grad > 0) & (x_cur >= 1)) | ((grad < 0) & (x_cur <= 0))
            score = grad.abs().masked_fill(blocked, 0.0)
            kth = score.topk(k, dim=1).values[:, -1:]
            chosen = (score >= kth) & (score > 0)
            g = grad * chosen
            direction = g / g.abs().sum(1, keepdim=True).clamp_min(1e-30)
            delta = delta + step_size * direction
            delta = delta + L1_projection(flat, delta, eps)
    return (flat + delta.detach()).view_as(x)


def _random_l1_start(flat: torch.Tensor, eps: float) -> torch.Tensor:
    """A random point of the l_1 ball (Laplace direction, uniform radius), clipped to the box.

    Clipping to [0,1] only shrinks |delta_i| because x is in the box, so it stays in the ball.
    """
    direction = torch.distributions.Laplace(0.0, 1.0).sample(flat.shape).to(flat)
    direction = direction / direction.abs().sum(1, keepdim=True)
    radius = eps * torch.rand(len(flat), 1, dtype=flat.dtype, device=flat.device)
    return (flat + radius * direction).clamp(0.0, 1.0) - flat


def _loss_and_fooled(net, x_adv, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and misclassification at x_adv (the attack's own dtype)."""
    with torch.no_grad():
        logits = net(x_adv)
    return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y
