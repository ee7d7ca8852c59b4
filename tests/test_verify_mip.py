"""The exact MIP (HiGHS) on tiny nets: minimal adversarial distances against a brute-force
grid, agreement of ``mip_verify`` with them (HiGHS and SCIP deciding the same l_1 / l_inf MILPs), counterexamples that pass the project's one check
(``check_adversarial``), and the soundness of every bound-propagation certificate against the
exact distance. Time limits are generous; a test relies on a solve only once HiGHS proved it
(optimal or infeasible), and skips, saying so, where the solver reports its time limit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmru.attacks import check_adversarial
from mmru.models import ReLUNet, mlp
from mmru.verify import certify, layer_bounds, mip_min_distance, mip_verify
from mmru.verify.bounds import METHODS
from mmru.verify.mip import DISTANCE_TOL
from tiny_nets import through_the_box

INF = math.inf


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int, d: int = 4) -> ReLUNet:
    return through_the_box(mlp((d,), 3, (8, 8)).double(), seed)


def _correct_points(net: ReLUNet, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, net.input_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        return x, net(x).argmax(1)


def _is_counterexample(net: ReLUNet, x: torch.Tensor, point: torch.Tensor, y: int, eps: float, p: float) -> bool:
    """The project's one definition, on single points."""
    shape = (1, *net.input_shape)
    return bool(check_adversarial(net, x.reshape(shape), point.reshape(shape), torch.tensor([y]), eps, p)[0])


def _exact(net: ReLUNet, x: torch.Tensor, y: int, p: float):
    """The minimal distance, proven optimal (a generous limit: tiny MILPs take well under 1 s)."""
    md = mip_min_distance(net, x, y, p, time_limit=300)
    if md.timed_out:
        pytest.skip(f"HiGHS reached its 300 s time limit on a tiny MILP (p={p})")
    assert md.optimal and md.lower <= md.distance <= md.lower + DISTANCE_TOL
    if md.point is not None:
        assert _is_counterexample(net, x, md.point, y, md.distance, p)
    return md


def _decided(net: ReLUNet, x: torch.Tensor, y: int, eps: float, p: float, **kwargs):
    res = mip_verify(net, x, y, eps, p, time_limit=300, **kwargs)
    if res.status == "timeout":
        pytest.skip(f"the solver reached its 300 s time limit on a tiny MILP (p={p}, {kwargs})")
    return res


@pytest.mark.parametrize("p", [1.0, INF])
def test_min_distance_matches_a_brute_force_grid(p):
    """2-D inputs: the MIP's distance is attained, and no grid point of another class is closer."""
    net = _net(0, d=2)
    x, y = _correct_points(net, 3, seed=1)
    g = torch.linspace(0, 1, 401, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        labels = net(grid).argmax(1)
    for i in range(3):
        md = _exact(net, x[i], int(y[i]), p)  # its point passes check_adversarial at md.distance
        other = grid[labels != y[i]]
        if md.point is None:  # the whole box is one class
            assert len(other) == 0
            continue
        assert abs(float(torch.linalg.vector_norm(md.point - x[i], ord=p)) - md.distance) < 1e-9
        nearest = torch.linalg.vector_norm(other - x[i], ord=p, dim=1).min()
        assert md.lower <= nearest + 1e-12  # no misclassified grid point is closer than proven
        assert md.distance >= nearest - 2.0 / 400 * (2 if p == 1.0 else 1)  # within a grid cell


@pytest.mark.parametrize("p", [1.0, INF])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("solver", ["highs", "scip"])
def test_certificates_and_mip_verify_agree_with_the_exact_distance(p, seed, solver):
    """Certified at eps => eps < d*; MIP robust below d*, attacked (checked) above it, by either solver."""
    net = _net(seed)
    x, y = _correct_points(net, 3, seed=10 + seed)
    certified_somewhere = 0
    for i in range(len(x)):
        d_star = _exact(net, x[i], int(y[i]), p)
        if d_star.point is None:
            continue
        d = d_star.distance
        for factor in (0.3, 0.6, 0.95, 1.0001, 1.05, 1.5):
            eps = factor * d
            for method in METHODS:
                ok = bool(certify(net, x[i : i + 1], y[i : i + 1], eps, p, method))
                assert not (ok and factor > 1), (method, factor)
                certified_somewhere += ok
            if factor in (0.95, 1.05):
                res = _decided(net, x[i], int(y[i]), eps, p, solver=solver)
                assert res.status == ("robust" if factor < 1 else "attacked")
                if res.status == "attacked":  # the very check the cascade applies
                    assert _is_counterexample(net, x[i], res.counterexample, int(y[i]), eps, p)
                else:
                    assert res.objective_bound > -1e-5 and res.counterexample is None
    assert certified_somewhere > 0


@pytest.mark.parametrize("solver", ["highs", "scip"])
def test_mip_on_a_conv_net(solver):
    """A conv net is encoded through its dense rows: robust below d*, attacked above it (by either
    solver, the big-M constants LP-tightened or the caller's), and CROWN-certified only below it."""
    layers = [nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Conv2d(2, 3, 2), nn.Linear(12, 3)]
    net = through_the_box(ReLUNet(layers, (1, 6, 6)).double(), 3)
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    for p in (INF, 1.0):
        d = _exact(net, x[0], int(y[0]), p)
        assert d.point is not None
        for factor in (0.9, 1.1):
            eps = factor * d.distance
            res = _decided(net, x[0], int(y[0]), eps, p, solver=solver)
            assert res.status == ("robust" if factor < 1 else "attacked")
            given = layer_bounds(net, x, eps, p, "kw")  # big-M constants supplied by the caller
            assert _decided(net, x[0], int(y[0]), eps, p, bounds=given, solver=solver).status == res.status
            if factor > 1:
                assert not certify(net, x, y, eps, p, "crown").any()
                assert _is_counterexample(net, x[0], res.counterexample, int(y[0]), eps, p)


def test_misclassified_point_is_its_own_counterexample():
    net = _net(0)
    x, y = _correct_points(net, 1, seed=2)
    wrong = (int(y[0]) + 1) % 3
    res = mip_verify(net, x[0], wrong, 0.1, INF)
    assert res.status == "attacked" and torch.equal(res.counterexample, x[0])
    assert mip_min_distance(net, x[0], wrong, 1.0).distance == 0.0


def test_other_norms_are_rejected():
    net = _net(0)
    with pytest.raises(ValueError):
        mip_verify(net, torch.zeros(4, dtype=torch.float64), 0, 0.1, 3.0)
