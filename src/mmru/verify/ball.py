"""The attacker's input set: an l_p ball around x, optionally intersected with the pixel box.

Every bound in this package ends by bounding a linear function <lam, x'> over this set.
Over the ball alone the answer is exact by Hoelder: <lam, x> -/+ eps ||lam||_q with q the dual
exponent of p. With the box [0, 1]^d the set shrinks, so any bound over a superset stays
sound; the ball lies in the l_inf cube of the same radius, and the cube intersected with the
box is a box again, where the extremes are exact per coordinate. The bound used is the
tighter of the two: exact for p = inf (the set is then that box), sound for every p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmru.balls import dual_exponent

Box = tuple[float, float]


@dataclass(frozen=True)
class LpBall:
    """{x' : ||x' - x||_p <= eps} (intersected with ``box`` when given), one ball per example.

    ``center`` is flat [B, d]; ``eps`` a float or a [B] tensor of per-example radii.
    """

    center: torch.Tensor
    eps: float | torch.Tensor
    p: float
    box: Box | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        dual_exponent(self.p)  # validates p >= 1

    @property
    def q(self) -> float:
        return dual_exponent(self.p)

    def radius(self) -> torch.Tensor:
        """eps as a scalar tensor or a [B, 1] column."""
        eps = torch.as_tensor(self.eps, dtype=self.center.dtype, device=self.center.device)
        return eps.reshape(-1, 1) if eps.dim() else eps

    def cube(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-coordinate bounds [lo, hi] of the l_inf cube of radius eps, clipped to the box."""
        eps = self.radius()
        lo, hi = self.center - eps, self.center + eps
        if self.box is not None:
            lo, hi = lo.clamp(*self.box), hi.clamp(*self.box)
        return lo, hi

    def linear_bounds(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min and max of <lam_i, x'> over the set, for lam [m, d] (shared) or [B, m, d].

        Returns two [B, m] tensors.
        """
        lo, hi = self.cube()
        return self.extremes(lam, self.center, lo, hi, batched_dot, self.radius())

    def extremes(self, lam, center, lo, hi, dot, eps, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """min and max of <lam, x'> with the input given as views matched to lam.

        ``dot(lam, v)`` contracts lam with a view v of an input vector (the centre, the
        cube's corners); ``eps`` broadcasts against the result; ``mask`` (same layout as
        lam) zeroes the coordinates that are not inputs, e.g. zero padding seen by a patch.
        """
        lower = upper = None
        if self.p == math.inf or self.box is not None:
            centre, spread = dot(lam, (hi + lo) / 2), dot(lam.abs(), (hi - lo) / 2)
            lower, upper = centre - spread, centre + spread
        if self.p != math.inf:
            at_x = dot(lam, center)
            masked = lam if mask is None else lam * mask
            spread = eps * torch.linalg.vector_norm(masked, ord=self.q, dim=-1)
            if lower is None:
                lower, upper = at_x - spread, at_x + spread
            else:  # the cube is a superset of the ball: keep the tighter of the two bounds
                lower, upper = torch.maximum(lower, at_x - spread), torch.minimum(upper, at_x + spread)
        return lower, upper

    def contains(self, points: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
        """Whether flat points [B, d] (one per ball) lie in the set, up to ``tol``."""
        dist = torch.linalg.vector_norm(points - self.center, ord=self.p, dim=-1)
        inside = dist <= self.radius().reshape(-1) + tol
        if self.box is not None:
            inside &= ((points >= self.box[0] - tol) & (points <= self.box[1] + tol)).all(-1)
        return inside


def batched_dot(lam: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """<lam_i, v_b> as [B, m] for lam [m, d] shared by the batch or [B, m, d]; v is [B, d]."""
    if lam.dim() == 2:
        return v @ lam.T
    return torch.einsum("bmd,bd->bm", lam, v)
