"""Certificates and exact counterexamples from the linear region Q(x) (Theorem 2.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmru.attacks import check_adversarial
from mmru.models import ReLUNet
from mmru.regions import region_distances

INF = math.inf


@dataclass
class RegionResult:
    """Per point: the certified radius of Theorem 2.1 and, in its exact case, a counterexample."""

    radius: torch.Tensor  #: [B] proven lower bound on r_p(x); 0 for misclassified points
    adversarial: torch.Tensor  #: [B] bool, a checked counterexample lies at ``adversarial_norm``
    adversarial_norm: torch.Tensor  #: [B] its l_p norm (inf where none)


def region_radii(net: ReLUNet, x: torch.Tensor, y: torch.Tensor, ps: list[float]) -> dict[float, RegionResult]:
    """Theorem 2.1 for each p in ``ps``; ``net`` must be float64 (certificates must not round up).

    With d^B = min_j d^B_j and d^D = min_s d^D_s (eq 3): r_p(x) >= d^B when d^B < d^D, and
    r_p(x) = d^D when 0 <= d^D <= d^B; in the latter case the l_p projection of x onto the
    closest decision hyperplane is a counterexample, unless it leaves the [0, 1] box. It is
    built and re-checked (inside ball, box, misclassified in float64) before it counts.
    """
    x64 = x.double()
    with torch.no_grad():
        dist = region_distances(net, x64, y, ps)
        correct = net(x64).argmax(1) == y
    out = {}
    for p in ps:
        d_b = dist[p].boundary.min(1).values
        d_d, target = dist[p].decision.min(1)
        radius = torch.where(correct, torch.minimum(d_b, d_d.clamp_min(0)), torch.zeros_like(d_b))
        exact = correct & (d_d <= d_b)
        adv_norm = torch.full_like(d_b, INF)
        found = torch.zeros_like(correct)
        if exact.any():
            idx = exact.nonzero().squeeze(1)
            x_adv = _project_past_hyperplane(net, x64[idx], y[idx], target[idx], p)
            # Box and label are checked here; the caller compares the norm with its eps.
            ok = check_adversarial(net, x64[idx], x_adv, y[idx], INF, p)
            norms = (x_adv - x64[idx]).flatten(1).norm(p=p, dim=1)
            found[idx[ok]] = True
            adv_norm[idx[ok]] = norms[ok]
        out[p] = RegionResult(radius.float(), found, adv_norm.float())
    return out


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
