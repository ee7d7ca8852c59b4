"""Closed forms (5), (6), (7), (13) against independent computations in low dimension."""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mmru.balls import dual_exponent, hull_bound, naive_bound, union_bound, universal_certificate

INF = math.inf
PS = [1.0, 1.5, 2.0, 3.0, INF]


def _norm(u: np.ndarray, p: float) -> np.ndarray:
    return np.linalg.norm(u, ord=p, axis=-1)


def _radii(d: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """eps1 below eps_inf, at both ends, at integer ratios, in between, and above d eps_inf."""
    e_inf = float(rng.uniform(0.5, 2.0))
    ratios = [0.4, 1.0, 2.0, float(d), 1.5 * d] + list(rng.uniform(1.0, d, size=4))
    return [(r * e_inf, e_inf) for r in ratios]


def _hull_exact(eps1: float, eps_inf: float, p: float, d: int) -> float:
    """min ||x||_p outside C = 1 / max{||u||_q : u in C°}, C° = {eps1 ||u||_inf <= 1, eps_inf ||u||_1 <= 1}.

    ||.||_q is convex, so its max over the polytope C° is at a vertex. By symmetry it suffices
    to search the part u_1 >= ... >= u_d >= 0; its vertices are found by enumerating d of its
    d + 2 constraints.
    """
    q = dual_exponent(p)
    rows = [np.eye(d)[0] * eps1, np.ones(d) * eps_inf]
    rhs = [1.0, 1.0]
    for i in range(d - 1):  # u_{i+1} - u_i <= 0
        rows.append(np.eye(d)[i + 1] - np.eye(d)[i])
        rhs.append(0.0)
    rows.append(-np.eye(d)[d - 1])  # -u_d <= 0
    rhs.append(0.0)
    A, b = np.array(rows), np.array(rhs)
    best = 0.0
    for active in itertools.combinations(range(d + 2), d):
        sub = A[list(active)]
        if abs(np.linalg.det(sub)) < 1e-12:
            continue
        u = np.linalg.solve(sub, b[list(active)])
        if np.all(A @ u <= b + 1e-9):
            best = max(best, float(_norm(u, q)))
    return 1.0 / best


def _union_exact(eps1: float, eps_inf: float, p: float, d: int) -> float:
    """min ||x||_p over ||x||_1 >= eps1, ||x||_inf >= eps_inf, by convex optimisation.

    By symmetry x can be taken sorted and non-negative, where ||x||_inf = x_1 and ||x||_1 =
    sum(x) are linear and the problem is convex (SLSQP finds the global minimum).
    """
    if p == INF:
        objective, grad = (lambda x: x[0]), (lambda x: np.eye(d)[0])
    else:
        objective, grad = (lambda x: np.sum(x**p)), (lambda x: p * x ** (p - 1))
    cons = [
        {"type": "ineq", "fun": lambda x: x[0] - eps_inf, "jac": lambda x: np.eye(d)[0]},
        {"type": "ineq", "fun": lambda x: np.sum(x) - eps1, "jac": lambda x: np.ones(d)},
        {"type": "ineq", "fun": lambda x: x[:-1] - x[1:], "jac": lambda x: np.eye(d)[:-1] - np.eye(d)[1:]},
    ]
    x0 = np.full(d, max(eps1, eps_inf))
    res = minimize(objective, x0, jac=grad, constraints=cons, bounds=[(0, None)] * d,
                   method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    # SLSQP may stop on a line-search message at the optimum: check feasibility instead
    x = res.x
    assert x.min() >= -1e-9 and x[0] >= eps_inf * (1 - 1e-9) and x.sum() >= eps1 * (1 - 1e-9)
    return float(_norm(x, p))


def _random_directions(d: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian, sparse Gaussian and sparse near-flat (+-1-like) directions.

    The extremal directions of both problems are sparse and flat (a few equal entries), which
    Gaussian directions alone reach slowly.
    """
    gauss = rng.standard_normal((n, d))
    mask = rng.random((n, d)) < 0.6
    flat = rng.choice([-1.0, 1.0], size=(n, d)) * rng.uniform(0.85, 1.0, size=(n, d))
    dirs = np.concatenate([gauss, gauss * mask, flat * mask])
    dirs[np.all(dirs == 0, axis=1), 0] = 1.0
    return dirs


def _union_ray(u: np.ndarray, eps1: float, eps_inf: float, p: float) -> np.ndarray:
    """||x||_p where the ray t u leaves B_1 u B_inf: t = max(eps1/||u||_1, eps_inf/||u||_inf)."""
    t = np.maximum(eps1 / _norm(u, 1), eps_inf / _norm(u, INF))
    return t * _norm(u, p)


def _hull_direction(u: np.ndarray, eps1: float, eps_inf: float, p: float) -> np.ndarray:
    """l_p-distance from 0 to the supporting hyperplane of C with normal u: h_C(u) / ||u||_q."""
    support = np.maximum(eps1 * _norm(u, INF), eps_inf * _norm(u, 1))
    return support / _norm(u, dual_exponent(p))


@pytest.mark.parametrize("d", [2, 3, 4, 5, 6])
def test_closed_forms_match_independent_minimisation(d):
    rng = np.random.default_rng(d)
    for (eps1, eps_inf), p in itertools.product(_radii(d, rng), PS):
        hull = float(hull_bound(eps1, eps_inf, p, d))
        union = float(union_bound(eps1, eps_inf, p, d))
        assert hull == pytest.approx(_hull_exact(eps1, eps_inf, p, d), rel=1e-9)
        assert union == pytest.approx(_union_exact(eps1, eps_inf, p, d), rel=1e-6)

        # no direction beats the closed forms, and sampling comes close to them
        u = _random_directions(d, 4000, rng)
        rays = _union_ray(u, eps1, eps_inf, p)
        faces = _hull_direction(u, eps1, eps_inf, p)
        assert rays.min() >= union * (1 - 1e-12)
        assert faces.min() >= hull * (1 - 1e-12)
        assert rays.min() <= union * 1.05
        assert faces.min() <= hull * 1.05

        naive = float(naive_bound(eps1, eps_inf, p, d))
        assert naive <= union * (1 + 1e-12) and union <= hull * (1 + 1e-12)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_cases_meet_at_the_interval_ends(p):
    d, e_inf = 7, 0.3
    for end in (e_inf, d * e_inf, 3 * e_inf):
        side = torch.tensor([end * (1 - 1e-12), end, end * (1 + 1e-12)], dtype=torch.float64)
        for fn in (union_bound, hull_bound):
            vals = fn(side, e_inf, p, d)
            assert torch.allclose(vals, vals[1].expand(3), rtol=1e-9)


def test_p_one_and_inf_are_limits_and_use_the_radii_directly():
    d = 10
    eps1 = torch.tensor([0.5, 1.0, 3.7, 10.0, 14.0], dtype=torch.float64)
    for fn in (union_bound, hull_bound):
        assert torch.allclose(fn(eps1, 1.0, 1.0, d), torch.clamp(eps1, min=1.0))
        assert torch.allclose(fn(eps1, 1.0, INF, d), torch.clamp(eps1 / d, min=1.0))
        assert torch.allclose(fn(eps1, 1.0, 1.0 + 1e-9, d), fn(eps1, 1.0, 1.0, d), rtol=1e-6)
        assert torch.allclose(fn(eps1, 1.0, 1e7, d), fn(eps1, 1.0, INF, d), rtol=1e-5)
    # consistent radii: the p = 1 / p = inf certificates are rho_1 / rho_inf
    rho_inf = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)
    rho_1 = torch.tensor([0.1, 0.45, 1.0], dtype=torch.float64)
    assert torch.equal(universal_certificate(rho_1, rho_inf, 1, d), rho_1)
    assert torch.equal(universal_certificate(rho_1, rho_inf, INF, d), rho_inf)


def test_l2_special_values():
    # alpha = 0: (7) is sqrt(eps1 eps_inf); (6) has the closed form quoted after Theorem 3.1
    d, e1, e_inf = 50, 12.0, 2.0
    assert float(hull_bound(e1, e_inf, 2, d)) == pytest.approx(math.sqrt(e1 * e_inf))
    assert float(union_bound(e1, e_inf, 2, d)) == pytest.approx(math.sqrt(e_inf**2 + (e1 - e_inf) ** 2 / (d - 1)))


def _ratio(eps1: torch.Tensor, d: int) -> torch.Tensor:
    """Figure 2's ratio: (7) over max((5), (6)), p = 2, eps_inf = 1."""
    return hull_bound(eps1, 1.0, 2, d) / torch.maximum(naive_bound(eps1, 1.0, 2, d), union_bound(eps1, 1.0, 2, d))


@pytest.mark.parametrize("d,peak_at,peak,real_at,real_peak", [(784, 28, 3.81, 27.5, 3.825), (3072, 55, 5.31, 55.5, 5.324)])
def test_figure2_peak_ratios(d, peak_at, peak, real_at, real_peak):
    integers = torch.arange(1, d + 1, dtype=torch.float64)
    r = _ratio(integers, d)
    assert int(integers[r.argmax()]) == peak_at
    assert float(r.max()) == pytest.approx(peak, abs=5e-3)
    # over real eps1, eq (7) gains where eps1 / eps_inf is not an integer
    fine = torch.linspace(1.0, float(d), 400_001, dtype=torch.float64)
    r = _ratio(fine, d)
    assert float(fine[r.argmax()]) == pytest.approx(real_at, abs=0.05)
    assert float(r.max()) == pytest.approx(real_peak, abs=1e-3)
    assert float(r.max()) > peak


def test_theorem41_certificate_is_sound_for_linear_pieces():
    """r_p(x) >= (13) whenever rho_1, rho_inf are the true distances to a set of hyperplanes."""
    g = torch.Generator().manual_seed(0)
    for d in (2, 3, 5, 8, 20):
        n, m = 500, 4  # points, hyperplanes each
        scale = torch.exp(2 * torch.randn(n, m, d, generator=g, dtype=torch.float64))
        w = torch.randn(n, m, d, generator=g, dtype=torch.float64) * scale
        w = w * (torch.rand(n, m, d, generator=g, dtype=torch.float64) < 0.7)
        w[..., 0] += 1e-3  # keep every normal non-zero
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        b = torch.randn(n, m, generator=g, dtype=torch.float64)
        gap = (torch.einsum("nmd,nd->nm", w, x) + b).abs()

        def dist(p):
            return (gap / torch.linalg.vector_norm(w, ord=dual_exponent(p), dim=-1)).min(dim=1).values

        rho_1, rho_inf = dist(1.0), dist(INF)
        assert torch.all(rho_1 >= rho_inf) and torch.all(rho_1 <= d * rho_inf * (1 + 1e-12))
        for p in [1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 8.0, INF]:
            assert torch.all(dist(p) >= universal_certificate(rho_1, rho_inf, p, d) * (1 - 1e-12))


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_theorem41_is_tight_on_the_closest_facet(p):
    # the hyperplane <v, y> = 1 with v = (1/r1 [k times], alpha/r1, 0...) has rho_1 = r1,
    # rho_inf = r_inf, and its l_p-distance is exactly (13)
    d, r1, r_inf = 9, 3.4, 1.0
    v = torch.zeros(d, dtype=torch.float64)
    v[:3], v[3] = 1 / r1, 0.4 / r1
    dist = {pp: 1.0 / float(torch.linalg.vector_norm(v, ord=dual_exponent(pp))) for pp in (1.0, INF, p)}
    assert dist[1.0] == pytest.approx(r1) and dist[INF] == pytest.approx(r_inf)
    assert float(universal_certificate(r1, r_inf, p, d)) == pytest.approx(dist[p], rel=1e-12)


def test_certificate_zero_cases_and_types():
    rho_1 = torch.tensor([0.0, 0.5, 0.5, -0.2, 0.5])
    rho_inf = torch.tensor([0.0, 0.0, 0.1, 0.1, 0.1])
    correct = torch.tensor([True, True, True, True, False])
    cert = universal_certificate(rho_1, rho_inf, 2.0, 784, correct=correct)
    assert cert.dtype == torch.float32
    assert torch.isfinite(cert).all()
    assert cert.tolist()[:2] == [0.0, 0.0] and cert[2] > 0 and cert[3] == 0 and cert[4] == 0
    # floats, numpy arrays and tensors broadcast together
    out = hull_bound(np.array([1.0, 2.0, 3.0]), 1.0, 2, 3)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (3,)
    assert torch.isfinite(union_bound(torch.tensor([0.0, 1.0]), 0.0, 2, 5)).all()
    with pytest.raises(ValueError):
        hull_bound(1.0, 1.0, 0.5, 3)
    with pytest.raises(ValueError):
        union_bound(1.0, 1.0, 2, 1)


def _hull_50_digits(eps1: float, eps_inf: float, p: float, d: int) -> mpmath.mpf:
    """Eq (7) in 50-digit arithmetic, for eps1 / eps_inf in [1, d]."""
    with mpmath.workdps(50):
        e1, ei = mpmath.mpf(eps1), mpmath.mpf(eps_inf)
        ratio = e1 / ei
        k = mpmath.floor(ratio)
        if p == INF:
            return ei
        q = mpmath.mpf(p) / (mpmath.mpf(p) - 1)
        return e1 * (k + (ratio - k) ** q) ** (-1 / q)


@pytest.mark.parametrize("d", [10, 784])
def test_theorem41_certificates_are_rounded_down(d):
    """Certified radii never exceed eq (7) evaluated in 50 digits; unrounded float64 does."""
    rng = np.random.default_rng(d)
    rho_inf = rng.uniform(0.01, 0.5, 400)
    rho_1 = rho_inf * rng.uniform(1.0, d, 400)
    above = 0
    for p in (1.5, 2.0, 3.0, 8.0, INF):
        cert = universal_certificate(torch.tensor(rho_1), torch.tensor(rho_inf), p, d).tolist()
        plain = hull_bound(torch.tensor(rho_1), torch.tensor(rho_inf), p, d).tolist()
        for i in range(len(rho_1)):
            exact = _hull_50_digits(rho_1[i], rho_inf[i], p, d)
            assert mpmath.mpf(cert[i]) <= exact, (p, i)
            assert mpmath.mpf(cert[i]) >= exact * (1 - 1e-13), (p, i)  # and by no more than rounding
            above += mpmath.mpf(plain[i]) > exact
    assert above > 0  # the unrounded closed form does round up on some of these
