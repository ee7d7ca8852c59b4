"""The threat model of the attacks: an l_p ball of radius eps around x, intersected with [0,1]^d.

A counterexample counts toward the lower bound (LB) on the robust test error only if it lies
in that set for real, not merely up to float32 rounding. :func:`snap_to_ball` moves an
attack's output into the set so that it passes the strict float64 check of
:func:`mmru.attacks.evaluate.check_adversarial`.
"""

from __future__ import annotations

import math

import torch

#: the shrink applied to eps before rounding back to the input dtype. It absorbs the float64
#: rounding of the norm computation, so the result is strictly inside the ball.
SNAP_MARGIN = 1e-9

#: relative slack that check_adversarial gives up (in the sound direction) to float64 rounding
#: of a norm: a sum of d <= ~10^4 terms is off by at most d * 2^-53 < 1e-12 relative.
CHECK_MARGIN = 1e-12


def as_p(p: float | int | str) -> float:
    """The norm index as 1.0, 2.0 or inf; accepts 1, 2, float('inf') and the string 'inf'."""
    p = float(p)
    if p not in (1.0, 2.0, math.inf):
        raise ValueError(f"attacks support p in {{1, 2, inf}}, got {p}")
    return p


def adversarial_norm(x: torch.Tensor, x_adv: torch.Tensor, p: float | int | str) -> torch.Tensor:
    """||x_adv - x||_p per example, computed in float64 (the difference of two float32 is exact there)."""
    delta = (x_adv.double() - x.double()).flatten(1)
    return torch.linalg.vector_norm(delta, ord=as_p(p), dim=1)


def snap_to_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float, p: float | int | str) -> torch.Tensor:
    """The point of the segment [x, x_adv] (after clipping x_adv to [0,1]) that lies in the
    l_p ball of radius eps * (1 - SNAP_MARGIN), returned in x's dtype.

    Only |x_adv_i - x_i| shrinks, coordinate by coordinate, so for every p the norm of the
    result is at most that of the float64 target. Rounding to x's dtype may overshoot by an
    ulp; such coordinates step one representable value towards x (``nextafter``) until none
    overshoots. Assumes x in [0,1]^d.
    """
    p = as_p(p)
    x64 = x.double()
    delta = x_adv.double().clamp(0.0, 1.0) - x64
    radius = eps * (1.0 - SNAP_MARGIN)
    if p == math.inf:
        delta = delta.clamp(-radius, radius)
    else:
        norm = torch.linalg.vector_norm(delta.flatten(1), ord=p, dim=1)
        scale = torch.where(norm > radius, radius / norm.clamp_min(1e-300), torch.ones_like(norm))
        delta = delta * scale.view(-1, *[1] * (x.dim() - 1))
    out = (x64 + delta).clamp(0.0, 1.0).to(x.dtype)
    while True:
        over = (out.double() - x64).abs() > delta.abs()
        if not over.any():
            return out
        out = torch.where(over, torch.nextafter(out, x), out)
