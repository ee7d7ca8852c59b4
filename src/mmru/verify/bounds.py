"""Certificates from bound propagation over l_p balls: IBP, KW and CROWN.

A point x with label y is certified at radius eps in l_p when, for every x' in the ball (and
in the pixel box), f_y(x') - f_s(x') > 0 for all s != y. Each method returns sound lower
bounds on these margins; the paper's upper bounds on the robust test error use KW (its [34],
valid for every p >= 1 through the dual norm, see ``LpBall``). CROWN is added as the
tighter default.

Guarantees kept by construction (and tested):
  * the first layer's bounds are the same for every method, exact over the ball (Hoelder)
    and over ball ∩ box for p = inf;
  * ``crown`` is never looser than ``kw``: at every layer its bounds are intersected with
    an independent KW pass (neither relaxation dominates the other unit by unit);
  * everything is batched and differentiable in the network parameters.
Soundness holds in exact arithmetic; in float32 the bounds carry rounding errors of order
1e-6 relative, so use float64 nets and inputs where margins that small matter.
"""

from __future__ import annotations

import torch

from mmru.models import ReLUNet
from mmru.verify.ball import Box, LpBall
from mmru.verify.ibp import ibp_linear, ibp_step
from mmru.verify.linear_bounds import backsubstitute, layer_bounds_by_backsubstitution
from mmru.verify.relaxation import relax

Bounds = tuple[torch.Tensor, torch.Tensor]
METHODS = ("ibp", "kw", "crown")


def input_ball(x: torch.Tensor, eps: float | torch.Tensor, p: float, box: Box | None = (0.0, 1.0)) -> LpBall:
    """The input set around a batch x [B, *input_shape]."""
    return LpBall(x.flatten(1), eps, float(p), box)


def _intersect(a: Bounds, b: Bounds) -> Bounds:
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def hidden_bounds(net: ReLUNet, ball: LpBall, method: str) -> dict[str, list[Bounds]]:
    """Bounds on every hidden pre-activation z_1 .. z_L, flat [B, n_l], for each pass ``method`` needs.

    Returns {"ibp": ...}, {"kw": ...} or {"kw": ..., "crown": ...} (CROWN's bounds already
    intersected with KW's).
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
    kw = [first]
    for k in range(1, num_hidden):
        kw.append(layer_bounds_by_backsubstitution(net, k, ball, [relax(b, adaptive=False) for b in kw]))
    if method == "kw":
        return {"kw": kw}
    crown = [first]
    for k in range(1, num_hidden):
        own = layer_bounds_by_backsubstitution(net, k, ball, [relax(b, adaptive=True) for b in crown])
        crown.append(_intersect(own, kw[k]))
    return {"kw": kw, "crown": crown}


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
        result = out if result is None else _intersect(result, out)
    return result


def layer_bounds(
    net: ReLUNet,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    p: float,
    method: str = "crown",
    box: Box | None = (0.0, 1.0),
) -> list[Bounds]:
    """Lower and upper bounds on every pre-activation, logits last, each flat [B, n_l]."""
    ball = input_ball(x, eps, p, box)
    passes = hidden_bounds(net, ball, method)
    logits = output_bounds(net, slice(None), ball, passes)
    return [*passes[method], logits]


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows e_y - e_s for every class s, [B, K, K]: spec f = f_y - f_s (row y is zero)."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def margin_lower_bounds(
    net: ReLUNet,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    p: float,
    method: str = "crown",
    box: Box | None = (0.0, 1.0),
) -> torch.Tensor:
    """Lower bounds [B, K] on min over the ball of f_y(x') - f_s(x'); entry y is exactly 0.

    The last layer is folded into the margins (bounding (W_y - W_s) a_L directly), which is
    tighter than subtracting logit bounds. With the zero at y, cross-entropy of minus these
    bounds is the robust loss of Wong & Kolter.
    """
    ball = input_ball(x, eps, p, box)
    passes = hidden_bounds(net, ball, method)
    spec = margin_spec(y, net.num_classes, x.dtype)
    lower, _ = output_bounds(net, spec, ball, passes)
    # Row y of the spec is zero, so its bound is 0 up to rounding: make it exact.
    return lower.masked_fill(spec.abs().sum(-1) == 0, 0.0)


def certify(
    net: ReLUNet,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    p: float,
    method: str = "crown",
    box: Box | None = (0.0, 1.0),
) -> torch.Tensor:
    """[B] bool: x is classified as y and every margin bound over the ball is positive."""
    with torch.no_grad():
        margins = margin_lower_bounds(net, x, y, eps, p, method, box)
        others = torch.ones_like(margins, dtype=torch.bool).scatter(1, y.unsqueeze(1), False)
        robust = torch.where(others, margins > 0, torch.ones_like(others)).all(1)
        return robust & (net(x).argmax(1) == y)
