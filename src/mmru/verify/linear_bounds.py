"""Linear relaxation bounds by back-substitution: KW (Wong & Kolter) and CROWN.

To bound a linear function <c, z_k> of layer k over the input set, write it in terms of
a_{k-1} = relu(z_{k-1}) through W_k, replace every ReLU by linear functions that bound it,
and repeat down to the input, where the ball is handled exactly by ``LpBall``.

With the relaxations of ``relaxation``, a positive coefficient takes the ReLU's lower line and
a negative one its upper line (for a lower bound; swapped for an upper bound).
  * KW: both lines share one slope, so lower and upper bounds share one coefficient matrix
    and differ only in the intercept terms. This is the dual network of Wong & Kolter
    (2018), computed exactly (no random projections).
  * CROWN (Zhang et al. 2018): the adaptive lower slope shrinks the relaxation; lower and
    upper bounds then need their own coefficient matrices (stacked as [spec; -spec]).
Intermediate bounds on z_1 .. z_{k-1} come from the same procedure, layer by layer. Nothing
is detached: the bounds are differentiable in the parameters (robust training, Wong & Kolter).
"""

from __future__ import annotations

import torch

from mmru.models import ReLUNet
from mmru.verify import affine, patches
from mmru.verify.ball import LpBall, batched_dot
from mmru.verify.relaxation import Relaxation

Bounds = tuple[torch.Tensor, torch.Tensor]

#: elements of the largest per-chunk coefficient tensor (float32: 64 MB); bounds memory use.
CHUNK_ELEMENTS = 2**24


def backsubstitute(
    net: ReLUNet, k: int, spec: torch.Tensor | slice, ball: LpBall, relaxations: list[Relaxation]
) -> Bounds:
    """Lower and upper bounds [B, m] on spec z_k over the ball.

    ``spec`` is a coefficient matrix [m, n_k] shared by the batch, [B, m, n_k] per example,
    or a slice of units of layer k (the rows of the identity). ``relaxations[j]`` relaxes the
    ReLU after layer j, j < k; all KW or all CROWN.
    """
    adaptive = k > 0 and relaxations[0].lower_slope is not None
    if isinstance(spec, slice):
        lam, const = affine.dense_rows(net, k, spec), affine.bias_vector(net, k)[spec]
        if adaptive:
            lam, const = torch.cat([lam, -lam]), torch.cat([const, -const])
    else:
        if adaptive:  # the upper bound of spec z is minus the lower bound of -spec z
            spec = torch.cat([spec, -spec], dim=-2)
        lam, const = affine.transpose(net, k, spec), affine.bias_dot(net, k, spec)
    c_lo = c_hi = const
    for j in reversed(range(k)):
        r = relaxations[j]
        neg = lam.clamp(max=0)
        c_lo = c_lo + batched_dot(neg, r.intercept)
        if adaptive:
            lower_or_upper = torch.where(lam >= 0, r.lower_slope.unsqueeze(1), r.slope.unsqueeze(1))
            lam = lam * lower_or_upper
        else:
            c_hi = c_hi + batched_dot(lam - neg, r.intercept)
            lam = lam * r.slope.unsqueeze(1)
        bias = affine.bias_dot(net, j, lam)
        c_lo, c_hi = c_lo + bias, c_hi + bias
        lam = affine.transpose(net, j, lam)
    lo, hi = ball.linear_bounds(lam)
    if adaptive:
        m = lo.shape[-1] // 2
        lower = c_lo + lo
        return lower[:, :m], -lower[:, m:]
    return c_lo + lo, c_hi + hi


def _slice_batch(ball: LpBall, relaxations: list[Relaxation], rows: slice) -> tuple[LpBall, list[Relaxation]]:
    """The ball and relaxations of a chunk of the batch."""
    eps = ball.eps[rows] if torch.is_tensor(ball.eps) and ball.eps.dim() else ball.eps
    part = LpBall(ball.center[rows], eps, ball.p, ball.box)
    cut = [
        Relaxation(r.slope[rows], r.intercept[rows], None if r.lower_slope is None else r.lower_slope[rows])
        for r in relaxations
    ]
    return part, cut


def layer_bounds_by_backsubstitution(
    net: ReLUNet, k: int, ball: LpBall, relaxations: list[Relaxation]
) -> Bounds:
    """Bounds on every unit of z_k, in chunks that cap memory.

    Units of leading conv layers go through ``patches`` (chunks of the batch); all others
    through dense rows (chunks of the units).
    """
    batch = ball.center.shape[0]
    stacked = 2 if k > 0 and relaxations[0].lower_slope is not None else 1  # CROWN: [spec; -spec]
    if patches.applies(net, k):
        step = max(1, CHUNK_ELEMENTS // patches.elements_per_example(net, k, stacked == 2))
        parts = [
            patches.conv_stack_bounds(net, k, *_slice_batch(ball, relaxations, slice(i, i + step)))
            for i in range(0, batch, step)
        ]
        axis = 0
    else:
        n_k = affine.layer_size(net, k)
        widest = max(affine.input_size(net, j) for j in range(k + 1))
        step = max(1, CHUNK_ELEMENTS // (batch * widest * stacked))
        parts = [backsubstitute(net, k, slice(i, i + step), ball, relaxations) for i in range(0, n_k, step)]
        axis = 1
    return torch.cat([p[0] for p in parts], dim=axis), torch.cat([p[1] for p in parts], dim=axis)
