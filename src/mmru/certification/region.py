"""Certificates and exact counterexamples from the linear region Q(x) (Theorem 2.1).

A certified radius is only as good as its last bit: the radii stay float64 (never narrowed) and
each distance |g_j(x)| / ||V_j||_q of eqs (14), (15) is replaced by a lower bound of its exact
value, covering the rounding of the forward pass, of the rows and of their norms (see
``_rounding_errors``; measured on cnn_small at initialisation: 1e-8 .. 1e-5 relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmru.attacks import check_adversarial
from mmru.models import ReLUNet
from mmru.regions import RowNorms, distances, dual_exponent, row_norms
from mmru.verify import affine

INF = math.inf


@dataclass
class RegionResult:
    """Per point: the certified radius of Theorem 2.1 and, in its exact case, a counterexample."""

    radius: torch.Tensor  #: [B] float64, proven lower bound on r_p(x); 0 for misclassified points
    adversarial: torch.Tensor  #: [B] bool, a checked counterexample lies at ``adversarial_norm``
    adversarial_norm: torch.Tensor  #: [B] float64, its l_p norm (inf where none)


def region_radii(net: ReLUNet, x: torch.Tensor, y: torch.Tensor, ps: list[float]) -> dict[float, RegionResult]:
    """Theorem 2.1 for each p in ``ps``; ``net`` must be float64, and the radii stay float64.

    With d^B = min_j d^B_j and d^D = min_s d^D_s (eq 3): r_p(x) >= d^B when d^B < d^D, and
    r_p(x) = d^D when 0 <= d^D <= d^B; in the latter case the l_p projection of x onto the
    closest decision hyperplane is a counterexample, unless it leaves the [0, 1] box. It is
    built and re-checked (inside ball, box, misclassified in float64) before it counts.
    The radius bounds the exact distances from below, rounding included (``_lower_distances``).
    """
    x64 = x.double()
    qs = {p: dual_exponent(p) for p in ps}
    with torch.no_grad():
        norms = row_norms(net, x64, y, set(qs.values()))
        correct = net(x64).argmax(1) == y
        errors = _rounding_errors(net, x64)
    out = {}
    for p in ps:
        nominal = distances(norms, p)
        d_b = nominal.boundary.min(1).values
        d_d, target = nominal.decision.min(1)
        low_b, low_d = _lower_distances(norms, qs[p], errors)
        radius = torch.minimum(low_b.min(1).values, low_d.min(1).values)
        radius = torch.where(correct, radius, torch.zeros_like(radius))
        exact = correct & (d_d <= d_b)
        adv_norm = torch.full_like(d_b, INF)
        found = torch.zeros_like(correct)
        if exact.any():
            idx = exact.nonzero().squeeze(1)
            x_adv = _project_past_hyperplane(net, x64[idx], y[idx], target[idx], p)
            # Box and label are checked here; the caller compares the norm with its eps.
            ok = check_adversarial(net, x64[idx], x_adv, y[idx], INF, p)
            norms_adv = (x_adv - x64[idx]).flatten(1).norm(p=p, dim=1)
            found[idx[ok]] = True
            adv_norm[idx[ok]] = norms_adv[ok]
        out[p] = RegionResult(radius, found, adv_norm)
    return out


@dataclass
class _Errors:
    """Rounding-error bounds of the region's hyperplanes at a batch (see ``_rounding_errors``)."""

    value: torch.Tensor  #: [B, N] bound on |computed g_j - g_j| at x and at any box point of Q(x)
    row: torch.Tensor  #: [B, N] bound on ||computed V_j - V_j||_q (any q >= 1)
    value_logits: torch.Tensor  #: [B, K] the same for the logits
    row_logits: torch.Tensor  #: [B, K]
    gamma: float  #: gamma_{2N}, also the relative error bound of the computed norms
    unit: float  #: u, the unit roundoff


def _rounding_errors(net: ReLUNet, x64: torch.Tensor) -> _Errors:
    """Error bounds for the float64 numerators and rows of eqs (14), (15) inside Q(x).

    Standard analysis: a chain of sums and products is off by at most gamma_n times the same
    chain in absolute values, gamma_n = n u / (1 - n u), n the sum of inner dimensions, here at
    most N = d + sum_k n_k + 2 (L + 1); gamma_{2N} leaves slack for the first-order terms and for
    the rounding of these bounds themselves. With the activation pattern D of Q(x):
      * values: M_k = |W_k| D_{k-1} M_{k-1} + |b_k| from M_0 = max(|x|, 1) bounds the chain of
        g_j at x and at every point of Q(x) in the [0, 1] box, so |fl(g_j) - g_j| <= gamma M_j;
      * rows: A_k = |W_k| D_{k-1} A_{k-1} from A_0 = 1 is ||(|W_k| D ... |W_1|)_j||_1 >=
        ||.||_q, so ||fl(V_j) - V_j||_q <= gamma A_j.
    """
    u = torch.finfo(torch.float64).eps / 2
    n = net.input_dim + net.num_hidden + net.num_classes + 2 * len(net.layers)
    gamma = 2 * n * u / (1 - 2 * n * u)
    zs = net.preactivations(x64)
    mag = x64.flatten(1).abs().clamp_min(1.0)
    row = torch.ones_like(mag)
    values, rows = [], []
    for k, z in enumerate(zs):
        row = affine.forward(net, k, row, absolute=True, bias=False)
        mag = affine.forward(net, k, mag, absolute=True, bias=False) + affine.bias_vector(net, k).abs()
        values.append(gamma * mag)
        rows.append(gamma * row)
        active = (z.flatten(1) > 0).to(mag.dtype)
        mag, row = mag * active, row * active
    return _Errors(torch.cat(values[:-1], 1), torch.cat(rows[:-1], 1), values[-1], rows[-1], gamma, u)


def _lower_distances(norms: RowNorms, q: float, err: _Errors) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bounds on the exact distances of eqs (14), (15): [B, N] boundary, [B, K] decision.

    |g_j| loses twice its error bound (once at x, once at the far point, so that the float64
    forward pass, which decides what counts as a counterexample, agrees up to the radius); the
    norm gains its relative error and the row's error; the last factor covers the rounding of
    these few operations themselves (at most 4 roundings: 8 u).
    """
    shrink = 1 - 8 * err.unit
    num_b = (norms.preact.abs() - 2 * err.value).clamp_min(0)
    den_b = norms.boundary[q] * (1 + err.gamma) + err.row
    y = norms.true_class.float().argmax(1, keepdim=True)
    value_d = err.value_logits + err.value_logits.gather(1, y)
    row_d = err.row_logits + err.row_logits.gather(1, y)
    num_d = (norms.margins - 2 * value_d - err.unit * norms.margins.abs()).clamp_min(0)
    den_d = norms.decision[q] * (1 + err.gamma) + row_d
    low_d = torch.where(norms.true_class, INF, num_d / den_d * shrink)
    return num_b / den_b * shrink, low_d


def _project_past_hyperplane(net: ReLUNet, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, p: float) -> torch.Tensor:
    """The smallest l_p step onto the hyperplane f_y = f_s of Q(x), taken 0.01% further.

    Inside Q(x) the margin is affine, so its gradient w is the hyperplane's normal
    V_y - V_s; the minimal l_p step to reach it is the dual-norm maximiser of <w, delta>.
    """
    x = x.clone().requires_grad_(True)
    logits = net(x)
    margin = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, s[:, None]).squeeze(1)
    (w,) = torch.autograd.grad(margin.sum(), x)
    w, m = w.flatten(1), margin.detach()
    if p == INF:
        step = w.sign() * (m / w.abs().sum(1)).unsqueeze(1)
    elif p == 1:
        j = w.abs().argmax(1, keepdim=True)
        wj = w.gather(1, j)
        step = torch.zeros_like(w).scatter(1, j, m.unsqueeze(1) / wj)
    else:
        q = p / (p - 1)
        direction = w.sign() * w.abs() ** (q - 1)
        step = direction * (m / (direction * w).sum(1)).unsqueeze(1)
    return (x.detach().flatten(1) - step * (1 + 1e-4)).view_as(x)
