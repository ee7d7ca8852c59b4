"""Closed-form l_p guarantees implied by l_1 and l_inf guarantees (Sections 3 and 4).

With B_1 the l_1-ball of radius eps1 and B_inf the l_inf-ball of radius eps_inf, both centred
at the origin of R^d, this module gives the smallest l_p-norm of a point outside

* the union B_1 u B_inf, as the naive norm-inequality bound, eq (5), and exactly, eq (6)
  (Proposition 3.1);
* the convex hull conv(B_1 u B_inf), exactly, eq (7) (Theorem 3.1);

and the lower bound on the l_p-robustness r_p(x) of a piecewise affine classifier that follows
from rho_1 and rho_inf, eq (13) (Theorem 4.1).

Every function is vectorised: ``eps1`` / ``eps_inf`` (or ``rho_1`` / ``rho_inf``) are floats,
numpy arrays or torch tensors that broadcast together; the result is a torch tensor (float64
unless a floating tensor was passed). ``p`` is a scalar in [1, inf], ``float('inf')`` allowed.
Every branch is evaluated on clamped, NaN-free inputs so that ``torch.where`` never sees NaN.

Limits at p = 1 (q = inf) and p = inf (q = 1), derived from the support function of the hull,
h_C(u) = max(eps1 ||u||_inf, eps_inf ||u||_1), since min_{x not in C} ||x||_p =
min_u h_C(u) / ||u||_q:

* hull, p = 1:   max(eps1, eps_inf)        (eq (7) tends to eps1 as q -> inf on its interval)
* hull, p = inf: max(eps_inf, eps1 / d)    (eq (7) equals eps1 / (k + alpha) = eps_inf there)
* union, p = 1:  max(eps1, eps_inf);  union, p = inf: max(eps_inf, eps1 / d)

so for one hyperplane, where rho_1 lies in [rho_inf, d rho_inf], the p = 1 and p = inf
certificates are rho_1 and rho_inf themselves.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Radius = torch.Tensor | np.ndarray | float

INF = math.inf

#: the certificates of eq (13) are shrunk by this many units of roundoff (see universal_certificate)
ROUNDING_ULPS = 64


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (p = 1 -> inf, p = inf -> 1)."""
    p = float(p)
    if not p >= 1.0:
        raise ValueError(f"p must lie in [1, inf], got {p}")
    if p == 1.0:
        return INF
    if p == INF:
        return 1.0
    return p / (p - 1.0)


def _tensors(*values: Radius) -> list[torch.Tensor]:
    """Broadcast radii to tensors of one floating dtype (that of the tensor inputs, else float64)."""
    given = [v for v in values if isinstance(v, torch.Tensor)]
    dtype = torch.float64
    floating = [v.dtype for v in given if v.is_floating_point()]
    if floating:
        dtype = floating[0]
        for dt in floating[1:]:
            dtype = torch.promote_types(dtype, dt)
    device = given[0].device if given else None
    out = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
    return list(torch.broadcast_tensors(*out))


def _check_d(d: int) -> int:
    if int(d) < 2:
        raise ValueError(f"the closed forms need d >= 2, got {d}")
    return int(d)


def _l1_ball_only(eps1: torch.Tensor, p: float, d: int) -> torch.Tensor:
    """min ||x||_p over ||x||_1 >= eps1: eps1 d^((1-p)/p), attained at x = (eps1/d) 1."""
    return eps1 * float(d) ** (1.0 / p - 1.0)


def naive_bound(eps1: Radius, eps_inf: Radius, p: float, d: int) -> torch.Tensor:
    """Eq (5): max(eps_inf, eps1 d^((1-p)/p)), a lower bound on min_{x not in B_1 u B_inf} ||x||_p.

    It uses ||x||_p >= ||x||_inf and ||x||_p >= d^((1-p)/p) ||x||_1 separately.
    """
    dual_exponent(p)  # validates p
    d = _check_d(d)
    eps1, eps_inf = _tensors(eps1, eps_inf)
    return torch.maximum(eps_inf, _l1_ball_only(eps1, float(p), d))


def _three_regimes(eps1: Radius, eps_inf: Radius, p: float, d: int, middle) -> torch.Tensor:
    """eps_inf where B_1 lies in B_inf, the l1-ball value where B_inf lies in B_1, else
    ``middle(eps1, eps_inf)`` (for 1 < p < inf; p = 1 gives eps1 and p = inf gives eps_inf there).
    The shared frame of eqs (6) and (7)."""
    dual_exponent(p)  # validates p
    d = _check_d(d)
    p = float(p)
    eps1, eps_inf = _tensors(eps1, eps_inf)
    if p == 1.0:
        between = eps1
    elif p == INF:
        between = eps_inf
    else:
        between = middle(eps1, torch.where(eps_inf > 0, eps_inf, torch.ones_like(eps_inf)))
    inside_inf, inside_1 = eps1 <= eps_inf, eps1 >= d * eps_inf
    return torch.where(inside_inf, eps_inf, torch.where(inside_1, _l1_ball_only(eps1, p, d), between))


def union_bound(eps1: Radius, eps_inf: Radius, p: float, d: int) -> torch.Tensor:
    """Eq (6) (Proposition 3.1): exact min of ||x||_p over R^d minus (B_1 u B_inf).

    * eps1 <= eps_inf:            B_1 lies in B_inf, the answer is eps_inf;
    * eps1 >= d eps_inf:          B_inf lies in B_1, the answer is eps1 d^((1-p)/p);
    * in between:                 (eps_inf^p + (eps1 - eps_inf)^p / (d-1)^(p-1))^(1/p).

    The three cases agree at both boundaries. The middle case is evaluated as
    eps_inf (1 + (d-1) r^p)^(1/p) with r = (eps1 - eps_inf) / ((d-1) eps_inf) in [0, 1], which
    cannot overflow for large p; p = 1 gives eps1 and p = inf gives eps_inf there.
    """
    def middle(eps1: torch.Tensor, safe_inf: torch.Tensor) -> torch.Tensor:
        r = ((eps1 - safe_inf) / ((d - 1) * safe_inf)).clamp(0.0, 1.0)
        return safe_inf * (1.0 + (d - 1) * r**p) ** (1.0 / p)

    return _three_regimes(eps1, eps_inf, p, d, middle)


def hull_bound(eps1: Radius, eps_inf: Radius, p: float, d: int) -> torch.Tensor:
    """Eq (7) (Theorem 3.1): exact min of ||x||_p over R^d minus conv(B_1 u B_inf).

    For eps1 in (eps_inf, d eps_inf), with k = floor(eps1/eps_inf), alpha = eps1/eps_inf - k and
    1/p + 1/q = 1, the answer is eps1 / (k + alpha^q)^(1/q): the closest facet has normal
    (1/eps1, ..., 1/eps1 [k times], alpha/eps1, 0, ..., 0). Outside that interval the hull is
    one of the balls: B_inf for eps1 <= eps_inf (answer eps_inf) and B_1 for eps1 >= d eps_inf
    (answer eps1 d^((1-p)/p)); eq (7) meets both at the ends (k = 1 resp. k = d, alpha = 0).
    The expression is continuous in eps1 / eps_inf (k + alpha^q is continuous as alpha -> 1).
    p = 1 gives eps1 and p = inf gives eps_inf on the interval (see the module docstring).
    """
    q = dual_exponent(p)

    def middle(eps1: torch.Tensor, safe_inf: torch.Tensor) -> torch.Tensor:
        # clamp to the interval so that the unused branches stay finite
        ratio = (eps1 / safe_inf).clamp(1.0, float(_check_d(d)))
        k = torch.floor(ratio)
        alpha = ratio - k
        return eps1 * (k + alpha**q) ** (-1.0 / q)

    return _three_regimes(eps1, eps_inf, p, d, middle)


def universal_certificate(
    rho_1: Radius,
    rho_inf: Radius,
    p: float,
    d: int,
    correct: torch.Tensor | np.ndarray | bool | None = None,
) -> torch.Tensor:
    """Eq (13) (Theorem 4.1): lower bound on r_p(x) from rho_1 and rho_inf, for any p in [1, inf].

    rho_p = min(d_p^B(x), |d_p^D(x)|) is the l_p-distance from x to the closest hyperplane of its
    linear region or of the decision boundary. No such hyperplane meets the interior of
    B_1(x, rho_1) or of B_inf(x, rho_inf); both balls contain x, so each hyperplane leaves them
    on one side, hence also their convex hull, and its l_p-distance is at least eq (7). That
    argument needs no relation between rho_1 and rho_inf, so ``hull_bound`` (which handles all
    ratios) is used as it is; for consistent inputs rho_1 lies in [rho_inf, d rho_inf], where it
    is eq (13), and p = 1 / p = inf return rho_1 / rho_inf.

    The certificate is 0 where rho_1 <= 0 or rho_inf <= 0 (a hyperplane through x, or a signed
    distance of a misclassified point) and where ``correct`` is False (r_p(x) = 0 there).

    It is rounded down, being a certified radius: eq (7) takes at most 8 rounded operations
    (ratio, floor, alpha, alpha^q, k + alpha^q, its 1/q-th power, the product; or eps1 d^(1/p-1)),
    each with relative error <= u (pow within one more ulp). The only amplification is the
    rounding of the ratio inside alpha: it moves alpha^q by <= q alpha^(q-1) ratio u, relative
    <= 2 q u to k + alpha^q >= max(1, ratio - 1), which the power 1/q brings back to 2 u. So the
    computed value is within 16 u relative of the exact one; it is multiplied by 1 - 64 u, then
    raised to rho_inf where below (every point outside B_inf has ||.||_p >= ||.||_inf > rho_inf).
    p = 1 is computed exactly (it selects rho_1 or rho_inf) and is not shrunk.
    """
    rho_1, rho_inf = _tensors(rho_1, rho_inf)
    valid = (rho_1 > 0) & (rho_inf > 0)
    if correct is not None:
        valid = valid & torch.as_tensor(correct, dtype=torch.bool, device=valid.device)
    one = torch.ones_like(rho_1)
    bound = hull_bound(torch.where(valid, rho_1, one), torch.where(valid, rho_inf, one), p, d)
    if float(p) != 1.0:
        shrink = 1.0 - ROUNDING_ULPS * torch.finfo(bound.dtype).eps / 2
        bound = torch.maximum(bound * shrink, torch.where(valid, rho_inf, one))
    return torch.where(valid, bound, torch.zeros_like(bound))
