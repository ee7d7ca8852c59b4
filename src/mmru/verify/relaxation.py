"""Linear bounds on a ReLU given bounds on its input (the relaxations of KW and CROWN).

For a unit with pre-activation bounds l < 0 < u ("unstable") the ReLU lies between
    alpha z <= relu(z) <= s (z - l),   s = u / (u - l),  alpha in [0, 1];
stable units are exactly linear (slope 1 when l >= 0, 0 when u <= 0). KW (Wong & Kolter)
takes alpha = s; CROWN takes alpha = 1 if u >= -l else 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Bounds = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Relaxation:
    """Linear bounds alpha z <= relu(z) <= slope z + intercept of each unit, [B, n] each.

    ``lower_slope`` None means alpha = slope (KW).
    """

    slope: torch.Tensor
    intercept: torch.Tensor
    lower_slope: torch.Tensor | None


def relax(bounds: Bounds, adaptive: bool) -> Relaxation:
    """ReLU relaxation from pre-activation bounds: KW (adaptive=False) or CROWN (True)."""
    lo, hi = bounds
    active, unstable = lo >= 0, (lo < 0) & (hi > 0)
    # The clamp keeps the division finite on stable units, so gradients through the unused
    # branch of ``where`` stay finite too.
    s_unstable = hi / (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny)
    slope = torch.where(unstable, s_unstable, active.to(lo.dtype))
    intercept = torch.where(unstable, -slope * lo, torch.zeros_like(lo))
    if not adaptive:
        return Relaxation(slope, intercept, None)
    alpha = torch.where(unstable, (hi >= -lo).to(lo.dtype), active.to(lo.dtype))
    return Relaxation(slope, intercept, alpha)
