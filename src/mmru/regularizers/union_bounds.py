"""Margin lower bounds for certified training over l_p balls: IBP and CROWN-IBP, at training speed.

The same bounds as ``mmru.verify`` (its ``hidden_bounds(.., "ibp")`` and a CROWN
back-substitution over IBP's intermediate bounds), computed the cheap way a training step needs:
  * first layer: z_1 = W_1 x + b_1 over the ball ∩ box is bounded by the tighter of Hoelder's
    bound W_1 x + b_1 -/+ eps ||W_1,j||_q (q the dual exponent) and the box bound over the l_inf
    cube ∩ box (exact for p = inf), as ``LpBall.extremes``; here with a few convolutions
    instead of ``mmru.verify.patches``' per-example windows (10x faster on cnn_small, same
    numbers up to rounding, a test compares them);
  * IBP (Gowal et al. 2018): intervals after the first layer, the last layer folded into the
    margin rows (``mmru.verify.ibp``'s arithmetic);
  * CROWN-IBP (Zhang et al. 2020): the margin rows back-substituted to the input through CROWN's
    relaxations (adaptive lower slope) of IBP's intermediate bounds; only the lower bound,
    which halves ``mmru.verify.linear_bounds.backsubstitute``'s work, with a hand-written backward
    for each ReLU layer (``_RelaxedCoefficients``).
The first conv layer's maps come from ``first_layer`` (space-to-depth conv, sub-pixel transpose), where the
CPU's conv kernels are slowest, and values on a conv's output (the bounds of every hidden layer,
CROWN's coefficients) are kept flat in channels-last (H, W, C) order (``channels_last``); tests
compare every fast path with the plain map it replaces.
Training bounds: certificates come from ``mmru.verify`` (certify.py), never from here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmru.balls import dual_exponent
from mmru.models import ReLUNet
from mmru.regularizers import channels_last
from mmru.regularizers.first_layer import FirstLayer
from mmru.verify import affine
from mmru.verify.ball import LpBall
from mmru.verify.ibp import relu_box
from mmru.verify.relaxation import relax

Bounds = tuple[Tensor, Tensor]


def dual_row_norms(net: ReLUNet, q: float) -> Tensor:
    """||W_1,j||_q of every unit j of the first layer, [n_1]; for a conv, over the inputs its
    window covers (zero padding contributes nothing), in (H, W, C) order."""
    layer = net.layers[0]
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return torch.linalg.vector_norm(w, ord=q, dim=1)
    conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    ones = w.new_ones(1, *net.input_shape)
    if q == math.inf:  # the largest |w| among the window's positions inside the image
        inside = F.unfold(ones, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # [1, C k k, P]
        norms = (w.abs().flatten(1).unsqueeze(-1) * inside).amax(1)  # [O, P]
    else:  # (sum over the window of |w|^q)^(1/q): a convolution of an all-ones image
        norms = F.conv2d(ones, w.abs() ** q, None, **conv).flatten(2)[0].clamp_min(0) ** (1 / q)
    return norms.t().flatten()  # [O, P] -> (P, O)


def first_layer_bounds(net: ReLUNet, ball: LpBall) -> Bounds:
    """Bounds [B, n_1] on z_1 over the ball (∩ box), as ``LpBall.linear_bounds`` of W_1's rows
    (in ``channels_last``'s order)."""
    lower = upper = None
    first = FirstLayer(net)
    if ball.p == math.inf or ball.box is not None:
        lo, hi = ball.cube()
        centre = first((hi + lo) / 2)
        spread = first((hi - lo) / 2, absolute=True, bias=False)
        lower, upper = centre - spread, centre + spread
    if ball.p != math.inf:
        at_x = first(ball.center)
        spread = ball.radius() * dual_row_norms(net, dual_exponent(ball.p))
        ball_lower, ball_upper = at_x - spread, at_x + spread
        if lower is None:
            return ball_lower, ball_upper
        # the cube ∩ box contains the ball ∩ box: keep the tighter bound. By a selection rather than
        # torch.maximum / minimum, whose backward splits the gradient at ties (eight more passes
        # over [B, n_1] per norm); here a tie sends it to the ball's bound, a subgradient as well
        lower = torch.where(ball_lower >= lower, ball_lower, lower)
        upper = torch.where(ball_upper <= upper, ball_upper, upper)
    return lower, upper


def ibp_step(net: ReLUNet, k: int, prev: Bounds) -> Bounds:
    """Bounds on z_k from bounds on z_{k-1} (k >= 1): the box W c + b -/+ |W| r."""
    mid, rad = relu_box(prev)
    centre = channels_last.forward(net, k, mid)
    spread = channels_last.forward(net, k, rad, absolute=True, bias=False)
    return centre - spread, centre + spread


def ibp_linear(net: ReLUNet, k: int, spec: Tensor, prev: Bounds) -> Bounds:
    """Bounds on spec z_k for spec [B, m, n_k], layer k folded into the spec (``mmru.verify.ibp``)."""
    mid, rad = relu_box(prev)
    rows = channels_last.transpose(net, k, spec)
    centre = _dot(rows, mid) + affine.bias_dot(net, k, spec)
    spread = _dot(rows.abs(), rad)
    return centre - spread, centre + spread


def ibp_hidden_bounds(net: ReLUNet, ball: LpBall) -> list[Bounds]:
    """Bounds on z_1 .. z_L (the hidden layers): exact-ish first layer, then intervals."""
    bounds = [first_layer_bounds(net, ball)]
    for k in range(1, len(net.layers) - 1):
        bounds.append(ibp_step(net, k, bounds[-1]))
    return bounds


def _dot(lam: Tensor, v: Tensor) -> Tensor:
    """<lam_i, v_b> as [B, m] for lam [B, m, d], v [B, d]: ``batched_dot`` as a product and a sum, whose
    backward is a broadcast product (einsum's is a batched outer product, 10x slower here)."""
    return (lam * v.unsqueeze(-2)).sum(-1)


class _RelaxedCoefficients(torch.autograd.Function):
    """One ReLU layer of CROWN's back-substitution (the lower bound), with a hand-written backward.

    Coefficients lam [B, m, n] on the activations become coefficients on the pre-activations:
    a negative one takes the upper line slope z + intercept, a non-negative one the lower line
    alpha z. Returns (new lam [B, m, n], the intercept's part of the constant [B, m]).

    Why by hand: the same arithmetic through autograd keeps five [B, m, n] tensors alive for the
    backward pass and allocates a dozen; on cnn_small that is 14 MB each, and on the CPU fresh
    memory costs more than the arithmetic. Only lam is saved here, and the backward recomputes
    its sign. Exact: each entry of min(lam, 0) and max(lam, 0) is the coefficient itself or 0, so
    the forward values are those of the split products.
    """

    @staticmethod
    def forward(ctx, lam: Tensor, slope: Tensor, alpha: Tensor, intercept: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(lam, slope, alpha, intercept)
        neg = lam.clamp(max=0)
        const = torch.bmm(neg, intercept.unsqueeze(-1)).squeeze(-1)
        out = neg.mul_(slope.unsqueeze(1)).addcmul_(lam.clamp(min=0), alpha.unsqueeze(1))
        return out, const

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_const: Tensor):
        lam, slope, alpha, intercept = ctx.saved_tensors
        negative = lam <= 0  # where d min(lam, 0) / d lam = 1, as autograd has it for clamp
        grad_lam = grad_slope = grad_alpha = grad_intercept = None
        if ctx.needs_input_grad[0]:
            upper = torch.addcmul(grad_out * slope.unsqueeze(1), grad_const.unsqueeze(-1), intercept.unsqueeze(1))
            grad_lam = torch.where(negative, upper, grad_out * alpha.unsqueeze(1))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            neg = lam.clamp(max=0)
            if ctx.needs_input_grad[1]:
                grad_slope = (grad_out * neg).sum(1)
            if ctx.needs_input_grad[3]:
                grad_intercept = torch.bmm(grad_const.unsqueeze(1), neg).squeeze(1)
        if ctx.needs_input_grad[2]:
            grad_alpha = (grad_out * lam.clamp(min=0)).sum(1)
        return grad_lam, grad_slope, grad_alpha, grad_intercept


def crown_lower(net: ReLUNet, spec: Tensor, ball: LpBall, hidden: list[Bounds]) -> Tensor:
    """Lower bounds [B, m] on spec f(x') over the ball, spec [B, m, K]: CROWN's relaxations of
    the ReLUs with pre-activation bounds ``hidden``, back-substituted (``backsubstitute``'s
    arithmetic for the lower bound only)."""
    last = len(net.layers) - 1
    lam, const = channels_last.transpose(net, last, spec), affine.bias_dot(net, last, spec)
    for j in reversed(range(last)):
        r = relax(hidden[j], adaptive=True)
        lam, from_intercept = _RelaxedCoefficients.apply(lam, r.slope, r.lower_slope, r.intercept)
        const = const + from_intercept + lam @ channels_last.bias_vector(net, j)
        lam = channels_last.transpose(net, j, lam)
    lo, hi = ball.cube()
    return const + ball.extremes(lam, ball.center, lo, hi, _dot, ball.radius())[0]


def margin_bounds(net: ReLUNet, x: Tensor, y: Tensor, eps: float, p: float, beta: float = 0.0) -> Tensor:
    """Lower bounds [B, K] on min over the l_p ball (∩ [0, 1]^d) of f_y - f_s; entry y exactly 0.

    ``beta`` mixes the two bounds of CROWN-IBP's objective, beta * CROWN-IBP + (1 - beta) * IBP
    (Zhang et al. 2020, eq. 8): both sound, so the mix is too. beta = 0 (IBP alone) skips the
    back-substitution. Only the K - 1 rows e_y - e_s, s != y, are propagated (row y is zero).
    """
    ball = LpBall(x.flatten(1), eps, float(p), (0.0, 1.0))
    k = net.num_classes
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    step = torch.arange(k - 1, device=x.device).unsqueeze(0)
    others = step + (step >= y.unsqueeze(1))  # [B, K - 1]: the classes s != y in order
    spec = eye[y].unsqueeze(1) - eye[others]  # rows e_y - e_s, [B, K - 1, K]
    if len(net.layers) == 1:  # a linear net: its margins are linear in x, bounded as the first layer
        lower = ball.linear_bounds(affine.transpose(net, 0, spec))[0] + affine.bias_dot(net, 0, spec)
    else:
        hidden = ibp_hidden_bounds(net, ball)
        lower = ibp_linear(net, len(net.layers) - 1, spec, hidden[-1])[0]
        if beta > 0:
            lower = beta * crown_lower(net, spec, ball, hidden) + (1 - beta) * lower
    return lower.new_zeros(len(y), k).scatter(1, others, lower)
