"""Robust error as a function of the radius, from the per-point records."""

from __future__ import annotations

import math

import numpy as np
import torch

from mmru.balls import universal_certificate
from mmru.certification.records import CERTIFIED, PointRecord

#: the norms of the Theorem 4.1 curve: l_1, l_∞ and what lies between
UNIVERSAL_PS = (1.0, 1.5, 2.0, 3.0, 4.0, 8.0, math.inf)


def _by_norm(records: list[PointRecord], norm: str) -> list[PointRecord]:
    return sorted((r for r in records if r.norm == norm), key=lambda r: r.index)


def robustness_curves(records: list[PointRecord], eps: dict[str, float], points: int = 41) -> dict:
    """Per norm, on eps in [0, 2 eps_p] (eps_p itself on the grid): certified error (UB) and
    empirical error (LB); and under "union", the same against the union of the balls, at radii
    t eps_p for t in [0, 2] ("eps" holds t there).

    A point counts as robust at radius r when its certified radius exceeds r, or reaches r by a
    method that proves closed balls (every method but the region's), or when its record is
    certified and r is at most the record's eps, so at eps_p the curve equals the summary's UB.
    It counts as broken at r when a checked counterexample of norm <= r was found (at eps_p:
    the summary's LB). Without stored radii (``radii=false``) a certificate proven only at eps_p
    does not count beyond it: the curve stays sound, if pessimistic. Union: robust at t when
    robust in every norm at t eps_p, broken when broken in any (at t = 1: ``union_ub``,
    ``union_lb``).
    """
    if points < 3 or points % 2 == 0:
        raise ValueError(f"points must be odd and >= 3 (eps_p sits in the middle), got {points}")
    # t * (i / half) is exactly t at i = half, and never above 2 t
    half = (points - 1) // 2
    scale = np.arange(points, dtype=np.float64) / half
    curves, robust, broken = {}, [], []
    for norm, radius in eps.items():
        mine = _by_norm(records, norm)
        grid = radius * scale
        certified = np.array([r.certified_radius for r in mine])
        closed = np.array([r.certified_by not in (None, "region") for r in mine])
        # the radius each point's status was decided at (the run's eps_p)
        proven_up_to = np.array([r.eps if r.status == CERTIFIED else -math.inf for r in mine])
        found = np.array([math.inf if r.adversarial_norm is None else r.adversarial_norm for r in mine])
        # [grid, points]
        robust.append((certified > grid[:, None]) | (closed & (certified >= grid[:, None]))
                      | (grid[:, None] <= proven_up_to))
        broken.append(found <= grid[:, None])
        curves[norm] = {
            "eps": grid.tolist(),
            "certified": (~robust[-1]).mean(1).tolist(),
            "empirical": broken[-1].mean(1).tolist(),
        }
    if len(eps) > 1:
        indices = [[r.index for r in _by_norm(records, norm)] for norm in eps]
        if any(ix != indices[0] for ix in indices):
            raise ValueError(f"the union curve needs records of the same points in every norm of {list(eps)}")
        curves["union"] = {
            "eps": scale.tolist(),
            "xlabel": "t (radius t·ε_p in every norm)",
            "certified": (~np.logical_and.reduce(robust)).mean(1).tolist(),
            "empirical": np.logical_or.reduce(broken).mean(1).tolist(),
        }
    return curves


def universal_curve(records: list[PointRecord], input_dim: int, points: int = 41) -> dict | None:
    """Theorem 4.1: certified robust error vs eps for every p in UNIVERSAL_PS from ρ_1, ρ_∞.

    ρ_p here is the linear-region quantity min(d^B_p, |d^D_p|) (``region_radius``): the
    theorem needs both from the same region, so certificates from other methods do not enter.
    """
    l1, linf = _by_norm(records, "l1"), _by_norm(records, "linf")
    if not l1 or [r.index for r in l1] != [r.index for r in linf]:
        return None
    rho_1 = torch.tensor([r.region_radius for r in l1], dtype=torch.float64)
    rho_inf = torch.tensor([r.region_radius for r in linf], dtype=torch.float64)
    correct = torch.tensor([r.correct for r in l1])
    radii = {p: universal_certificate(rho_1, rho_inf, p, input_dim, correct=correct) for p in UNIVERSAL_PS}
    top = float(max(float(r.max()) for r in radii.values())) or 1.0
    grid = np.linspace(0.0, top, points)
    return {
        "eps": grid.tolist(),
        "error": {_p_key(p): [float((r <= e).double().mean()) for e in grid] for p, r in radii.items()},
        "median_radius": {_p_key(p): float(r.median()) for p, r in radii.items()},
    }


def _p_key(p: float) -> str:
    return "inf" if math.isinf(p) else f"{p:g}"
