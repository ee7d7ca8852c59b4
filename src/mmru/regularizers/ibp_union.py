"""Certified training for the union of the l1, l2 and l_inf balls: IBP and CROWN-IBP.

A point is certified for the union when its margins stay positive over each of the three balls
(each intersected with the pixel box [0, 1]^d). Per norm, the margin lower bounds come from
bound propagation over that ball (``union_bounds``, the bounds of ``mmru.verify`` at training speed):
  * the first affine layer is bounded over the ball by duality (Hoelder, dual exponent q), and
    over the box: the tighter of the two sound bounds, exact for l_inf (``LpBall``);
  * IBP (Gowal et al. 2018, "On the effectiveness of interval bound propagation"): intervals
    after the first layer, the last layer folded into the margins;
  * CROWN-IBP (Zhang et al. 2020, "Towards stable and efficient training of verifiably robust
    neural networks"): the linear relaxation back-substituted from the margins to the input,
    with CROWN's adaptive lower slopes, over IBP's intermediate bounds.
The worst case over the three norms is the elementwise minimum of the three margin bounds; its
robust cross-entropy (Wong & Kolter's loss on the worst-case logits -m) bounds the
cross-entropy over the union of the balls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmru.models import ReLUNet
from mmru.regularizers.base import Regularizer, TrainingLoss
from mmru.regularizers.union_bounds import margin_bounds

#: the three norms of the union, by their config names
UNION_NORMS = {"l1": 1.0, "l2": 2.0, "linf": math.inf}


def union_margins(net: ReLUNet, x: Tensor, y: Tensor, eps: dict[str, float], beta: float = 0.0) -> dict[str, Tensor]:
    """``union_bounds.margin_bounds`` for each norm of ``eps`` ({'l1': .., 'l2': .., 'linf': ..})."""
    return {name: margin_bounds(net, x, y, eps[name], UNION_NORMS[name], beta) for name in eps}


def certified_by(margins: Tensor, y: Tensor) -> Tensor:
    """[B] bool: every margin bound but the one at y (always 0) is positive."""
    others = torch.ones_like(margins, dtype=torch.bool).scatter(1, y.unsqueeze(1), False)
    return torch.where(others, margins > 0, True).all(1)


class LinearRamp:
    """A value held at ``start`` for ``warmup`` epochs, then linear to ``end`` over ``ramp`` epochs.

    Epochs are fractional (epoch + batch / batches per epoch), so the ramp moves every step as
    in Gowal et al. 2018 (a warm-up of clean steps, then a linear ramp counted in steps), while
    staying a pure function of the training position: a resumed run repeats it.
    """

    def __init__(self, start: float, end: float, warmup: float, ramp: float):
        self.start, self.end, self.warmup, self.ramp = float(start), float(end), float(warmup), float(ramp)

    def fraction(self, t: float) -> float:
        """How far along the ramp training is at fractional epoch t, in [0, 1]."""
        if t < self.warmup:
            return 0.0
        return 1.0 if self.ramp <= 0 else min((t - self.warmup) / self.ramp, 1.0)

    def __call__(self, t: float) -> float:
        return self.start + (self.end - self.start) * self.fraction(t)


class IBPUnion(Regularizer):
    """IBP training for the union of balls: loss = kappa * clean CE + (1 - kappa) * robust CE.

    The robust CE is that of the elementwise minimum over l1, l2, l_inf of the margin bounds at
    the current radii ``eps_factor * eps[norm]`` (``union_margins``).

    Schedules (Gowal et al. 2018, Sec. 4 and App. A): the radii stay 0 (and kappa 1: clean
    training) for ``warmup_epochs``, then eps_factor ramps linearly from 0 to 1 over
    ``ramp_epochs`` while kappa falls linearly from ``kappa_start`` = 1 to ``kappa_end`` = 0.5.
    Both move every step (``on_step_start``), on fractional epochs. Before any schedule call
    the ramp is over (full radii, kappa_end). A fine-tune starts either ramp where it needs:
    ``eps_factor_start`` (default 0) is the radii's factor during the warm-up and at the ramp's
    start; ``warmup_epochs=0 ramp_epochs=0`` is the end of the ramps from the first step.

    Logged: ``ce_clean``, ``robust_ce``, ``robust_error`` (fraction of the batch that is
    misclassified or has a margin bound <= 0 in some norm at the current radii),
    ``robust_error_<norm>`` per norm, ``eps_factor`` and ``kappa``.
    """

    name = "ibp_union"

    def __init__(self, eps: dict[str, float], warmup_epochs: float = 1.0, ramp_epochs: float = 10.0,
                 kappa_start: float = 1.0, kappa_end: float = 0.5, eps_factor_start: float = 0.0):
        eps = {str(k): float(v) for k, v in dict(eps).items()}
        if set(eps) != set(UNION_NORMS):
            raise ValueError(f"eps needs a radius for each of l1, l2, linf, got {sorted(eps)}")
        if not all(0 < r < math.inf for r in eps.values()):
            raise ValueError(f"every radius must be positive and finite, got {eps}")
        if not (0 <= kappa_start <= 1 and 0 <= kappa_end <= 1 and 0 <= eps_factor_start <= 1):
            raise ValueError(f"kappa_start, kappa_end and eps_factor_start must lie in [0, 1], got {kappa_start}, "
                             f"{kappa_end}, {eps_factor_start}")
        if not (warmup_epochs >= 0 and ramp_epochs >= 0):
            raise ValueError(f"warmup_epochs and ramp_epochs must be >= 0, got {warmup_epochs}, {ramp_epochs}")
        self.eps = eps
        self.eps_ramp = LinearRamp(eps_factor_start, 1.0, warmup_epochs, ramp_epochs)
        self.kappa_ramp = LinearRamp(kappa_start, kappa_end, warmup_epochs, ramp_epochs)
        self.progress = math.inf

    def on_epoch_start(self, epoch: int, max_epochs: int) -> dict[str, float]:
        self.on_step_start(float(epoch))
        return self.schedule()

    def on_step_start(self, epoch: float) -> None:
        self.progress = epoch

    def schedule(self) -> dict[str, float]:
        """The scheduled values at the current training position."""
        return {"eps_factor": self.eps_ramp(self.progress), "kappa": self.kappa_ramp(self.progress)}

    def margins(self, net: ReLUNet, x: Tensor, y: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """Per-norm margin bounds at the current radii (IBP here; CROWN-IBP mixes in beta)."""
        return union_margins(net, x, y, self.scaled_eps(values["eps_factor"]))

    def scaled_eps(self, factor: float) -> dict[str, float]:
        return {name: factor * r for name, r in self.eps.items()}

    def training_loss(self, net: ReLUNet, x: Tensor, y: Tensor) -> TrainingLoss:
        values = self.schedule()
        logits = net(x)
        ce_clean = F.cross_entropy(logits, y)
        per_norm = self.margins(net, x, y, values)
        worst = torch.stack(list(per_norm.values())).amin(0)
        robust_ce = F.cross_entropy(-worst, y)
        kappa = values["kappa"]
        correct = logits.argmax(1) == y
        logs: dict[str, Tensor | float] = {
            "ce_clean": ce_clean.detach(),
            "robust_ce": robust_ce.detach(),
            "robust_error": (~(certified_by(worst, y) & correct)).float().mean().detach(),
            **{f"robust_error_{n}": (~(certified_by(m, y) & correct)).float().mean().detach()
               for n, m in per_norm.items()},
            **values,
        }
        return TrainingLoss(kappa * ce_clean + (1 - kappa) * robust_ce, logits, logs)


class CROWNIBPUnion(IBPUnion):
    """CROWN-IBP training for the union of balls (Zhang et al. 2020).

    As :class:`IBPUnion` with per-norm margin bounds beta * CROWN-IBP + (1 - beta) * IBP.
    Schedule of beta (Zhang et al. 2020, Sec. 4): linear from ``beta_start`` = 1 to
    ``beta_end`` = 0 over the same ramp as the radii (the warm-up keeps beta_start), so
    training starts on the tighter CROWN-IBP bounds and ends on IBP's. Logged: ``beta`` too.
    """

    name = "crown_ibp_union"

    def __init__(self, eps: dict[str, float], warmup_epochs: float = 1.0, ramp_epochs: float = 10.0,
                 kappa_start: float = 1.0, kappa_end: float = 0.5, beta_start: float = 1.0, beta_end: float = 0.0,
                 eps_factor_start: float = 0.0):
        super().__init__(eps, warmup_epochs, ramp_epochs, kappa_start, kappa_end, eps_factor_start)
        if not (0 <= beta_start <= 1 and 0 <= beta_end <= 1):
            raise ValueError(f"beta_start and beta_end must lie in [0, 1], got {beta_start}, {beta_end}")
        self.beta_ramp = LinearRamp(beta_start, beta_end, warmup_epochs, ramp_epochs)

    def schedule(self) -> dict[str, float]:
        return {**super().schedule(), "beta": self.beta_ramp(self.progress)}

    def margins(self, net: ReLUNet, x: Tensor, y: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        return union_margins(net, x, y, self.scaled_eps(values["eps_factor"]), beta=values["beta"])
