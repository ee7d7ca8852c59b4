"""Certificates from bound propagation over l_p balls: IBP, KW and CROWN.

A point x with label y is certified at radius eps in l_p when, for every x' in the ball (and
in the pixel box), f_y(x') - f_s(x') > 0 for all s != y. Each method returns sound lower
bounds on these margins; the paper's upper bounds on the robust test error use KW (its [34],
valid for every p >= 1 through the dual norm, see ``LpBall``). CROWN is added as the
tighter default.

Guarantees kept by construction (and tested):
  * the first layer's bounds are the same for every method, exact over the ball (Hoelder)
    and over ball ∩ box for p = inf;
  * ``crown`` is never looser than ``kw``: at every layer CROWN's own bounds (``crown_raw``,
    tested on their own against exact bounds) are intersected with an independent KW pass
    (neither relaxation dominates the other unit by unit);
  * everything is batched and differentiable in the network parameters.

Rounding. The bounds are sound in exact arithmetic; computed in floating point they can be
off by rounding, and a margin bound of +4e-16 on a net whose ball holds a misclassified point
is no certificate. ``certify`` therefore demands ``margin > rounding_tolerance(...)``, the
same function for every method, derived from the standard dot-product bound
|fl(sum) - sum| <= gamma_n sum |terms|, gamma_n = n u / (1 - n u), u = 2^-53 (float64) or
2^-24 (float32):
  * magnitudes: M_0 = |x| + eps bounds every |x'_i| of the ball; M_k = |W_k| m_{k-1} + |b_k|
    with m_{k-1} = M_{k-1} on units whose upper bound is > 0 in some pass and 0 on units
    that are stably inactive (slope 0, intercept 0). Every term of every sum the passes form
    for a bound on z_k (products along chains of |W|, slopes in [0, 1], intercepts s |l|
    <= |l| <= M, the input extremes) is at most M_k in absolute value, and for the margin
    row e_y - e_s at most 2 max_j M_{L,j};
  * n: a chain of products and sums has error <= gamma_N times its absolute value with N the
    sum of the inner dimensions, here at most N = d + sum_k n_k + 2 (L + 1) (the fan-ins plus
    the bias, intercept and relaxation operations of each layer); gamma_{2N} is used (slack
    for the first-order analysis and for the rounding of M itself);
  * depth: an error e_j in the bounds of layer j moves the relaxations (a unit's lines or its
    stability) by at most e_j, which reaches layer k weighted by at most M_k / M_j; with
    e_k <= (k + 2) gamma M_k of its own this gives e_k <= (k + 2) 2^(k+1) gamma M_k, and one
    more (L + 1) gamma M_L covers the float64 forward pass at a point of the ball (the
    check every counterexample must pass, ``mmru.attacks.check_adversarial``).
So tol = gamma_{2N} (L + 3) 2^(L+1) 2 max_j M_{L,j} per example, L the index of the logit
layer. It is conservative: measured in float64, 2e-13 on a 6-input linear net and, on
cnn_small (MNIST, at initialisation), 2e-8 at eps = 0 and 1.3e-7 at eps_inf = 0.1 -- far below
the margins that matter. Constant thresholds (the MIP's 1e-6 target skip) are sound only where
they are at least this tolerance; call ``rounding_tolerance`` rather than assume it.
"""

from __future__ import annotations

import torch

from mmru.models import ReLUNet
from mmru.verify import affine
from mmru.verify.ball import Box, LpBall
from mmru.verify.ibp import ibp_linear, ibp_step
from mmru.verify.linear_bounds import backsubstitute, layer_bounds_by_backsubstitution
from mmru.verify.relaxation import relax

Bounds = tuple[torch.Tensor, torch.Tensor]
METHODS = ("ibp", "kw", "crown")


def input_ball(x: torch.Tensor, eps: float | torch.Tensor, p: float, box: Box | None = (0.0, 1.0)) -> LpBall:
    """The input set around a batch x [B, *input_shape]."""
    return LpBall(x.flatten(1), eps, float(p), box)


def intersect_bounds(a: Bounds, b: Bounds) -> Bounds:
    """The tighter of two sound bounds on the same quantity, entry by entry."""
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def hidden_bounds(net: ReLUNet, ball: LpBall, method: str, intersect: bool = True) -> dict[str, list[Bounds]]:
    """Bounds on every hidden pre-activation z_1 .. z_L, flat [B, n_l], for each pass ``method`` needs.

    Returns {"ibp": ...}, {"kw": ...} or {"kw": ..., "crown": ...} with CROWN's bounds
    intersected with KW's at every layer; ``intersect=False`` gives CROWN's own pass alone,
    {"crown": ...} (the "crown_raw" of the tests).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    num_hidden = len(net.layers) - 1
    if num_hidden == 0:
        return {method: []}
    # z_1 = W_1 x + b_1 is linear in x: its bounds over the ball are exact, for every method.
    first = layer_bounds_by_backsubstitution(net, 0, ball, [])
    if method == "ibp":
        ibp = [first]
        for k in range(1, num_hidden):
            ibp.append(ibp_step(net, k, ibp[-1]))
        return {"ibp": ibp}
    kw = None
    if method == "kw" or intersect:
        kw = [first]
        for k in range(1, num_hidden):
            kw.append(layer_bounds_by_backsubstitution(net, k, ball, [relax(b, adaptive=False) for b in kw]))
        if method == "kw":
            return {"kw": kw}
    crown = [first]
    for k in range(1, num_hidden):
        own = layer_bounds_by_backsubstitution(net, k, ball, [relax(b, adaptive=True) for b in crown])
        crown.append(intersect_bounds(own, kw[k]) if intersect else own)
    return {"kw": kw, "crown": crown} if intersect else {"crown": crown}


def output_bounds(
    net: ReLUNet, spec: torch.Tensor | slice, ball: LpBall, passes: dict[str, list[Bounds]]
) -> Bounds:
    """Bounds on spec f(x') for spec [B, m, K], or on all logits for ``slice(None)``, from
    every pass of ``hidden_bounds``, intersected."""
    last = len(net.layers) - 1
    result = None
    for name, bounds in passes.items():
        relaxations = [relax(b, adaptive=name == "crown") for b in bounds]
        if name == "ibp" and last > 0:
            if isinstance(spec, slice):
                out = ibp_step(net, last, bounds[-1])
            else:
                out = ibp_linear(net, last, spec, bounds[-1])
        elif isinstance(spec, slice):
            out = layer_bounds_by_backsubstitution(net, last, ball, relaxations)
        else:
            out = backsubstitute(net, last, spec, ball, relaxations)
        result = out if result is None else intersect_bounds(result, out)
    return result


def layer_bounds(
    net: ReLUNet,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    p: float,
    method: str = "crown",
    box: Box | None = (0.0, 1.0),
    intersect: bool = True,
) -> list[Bounds]:
    """Lower and upper bounds on every pre-activation, logits last, each flat [B, n_l].

    ``intersect=False`` with ``method="crown"``: CROWN's own pass, without KW.
    """
    ball = input_ball(x, eps, p, box)
    passes = hidden_bounds(net, ball, method, intersect)
    logits = output_bounds(net, slice(None), ball, passes)
    return [*passes[method], logits]


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows e_y - e_s for every class s, [B, K, K]: spec f = f_y - f_s (row y is zero)."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _margins(net, x, y, eps, p, method, box, intersect) -> tuple[torch.Tensor, LpBall, dict[str, list[Bounds]]]:
    """Margin lower bounds [B, K], with the ball and the passes they came from."""
    ball = input_ball(x, eps, p, box)
    passes = hidden_bounds(net, ball, method, intersect)
    spec = margin_spec(y, net.num_classes, x.dtype)
    lower, _ = output_bounds(net, spec, ball, passes)
    # Row y of the spec is zero, so its bound is 0 up to rounding: make it exact.
    return lower.masked_fill(spec.abs().sum(-1) == 0, 0.0), ball, passes


def margin_lower_bounds(
    net: ReLUNet,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    p: float,
    method: str = "crown",
    box: Box | None = (0.0, 1.0),
    intersect: bool = True,
) -> torch.Tensor:
    """Lower bounds [B, K] on min over the ball of f_y(x') - f_s(x'); entry y is exactly 0.

    The last layer is folded into the margins (bounding (W_y - W_s) a_L directly), which is
    tighter than subtracting logit bounds. With the zero at y, cross-entropy of minus these
    bounds is the robust loss of Wong & Kolter. Sound up to ``rounding_tolerance``.
    """
    return _margins(net, x, y, eps, p, method, box, intersect)[0]


def _gamma(n: int, dtype: torch.dtype) -> float:
    """gamma_n = n u / (1 - n u), u the unit roundoff of ``dtype``."""
    nu = n * torch.finfo(dtype).eps / 2
    if nu >= 0.5:
        raise ValueError(f"{n} roundings in {dtype} leave no valid error bound")
    return nu / (1 - nu)


def rounding_tolerance(net: ReLUNet, ball: LpBall, passes: dict[str, list[Bounds]]) -> torch.Tensor:
    """[B] bound on the floating-point error of every margin bound the passes yield over
    ``ball``, and of the forward pass at any point of it (derivation: module docstring)."""
    last = len(net.layers) - 1
    with torch.no_grad():
        m = ball.center.abs() + ball.radius()
        for k in range(last + 1):
            mag = affine.forward(net, k, m, absolute=True, bias=False) + affine.bias_vector(net, k).abs()
            if k < last:  # stably inactive units (upper bound <= 0 in every pass) pass on nothing
                live = torch.stack([bounds[k][1] > 0 for bounds in passes.values()]).any(0)
                m = mag * live
        n = affine.input_size(net, 0) + sum(affine.layer_size(net, k) for k in range(last + 1)) + 2 * (last + 1)
        factor = _gamma(2 * n, ball.center.dtype) * (last + 3) * 2 ** (last + 1) * 2
        return factor * mag.amax(1)


def certify(
    net: ReLUNet,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    p: float,
    method: str = "crown",
    box: Box | None = (0.0, 1.0),
) -> torch.Tensor:
    """[B] bool: x is classified as y and every margin bound over the ball exceeds the
    rounding tolerance of its computation (``rounding_tolerance``)."""
    with torch.no_grad():
        margins, ball, passes = _margins(net, x, y, eps, p, method, box, True)
        tol = rounding_tolerance(net, ball, passes).unsqueeze(1)
        others = torch.ones_like(margins, dtype=torch.bool).scatter(1, y.unsqueeze(1), False)
        robust = torch.where(others, margins > tol, torch.ones_like(others)).all(1)
        return robust & (net(x).argmax(1) == y)
