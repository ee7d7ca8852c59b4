"""The exact l_2 MIP (SCIP, ``mmru.verify.miqp``) on tiny nets, against minimal l_2 distances
computed here independently: branch and bound over activation patterns, each pattern's region
a polytope whose distance from x is a least-distance program (scipy's NNLS; HiGHS's QP solver
failed on some of them). Both directions (robust => exact distance > eps, attacked => a checked
point within eps), the distance search bracketing the exact distance, completeness on tiny
nets, the decision rules with the solver replaced, the square root rounded down, and the
``mip_norms`` option."""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import mmru
from mmru.attacks import attack, check_adversarial
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.records import ATTACKED, CERTIFIED
from mmru.errors import ConfigError
from mmru.models import ReLUNet, mlp
from mmru.training import compose_config
from mmru.validation import validate_certify_config
from mmru.verify import certify, mip_min_distance, mip_verify
from mmru.verify.mip import DISTANCE_TOL
from mmru.verify.miqp import sqrt_down
from mmru.verify.scip_program import ScipProgram
from tiny_nets import through_the_box, tied_linear_net

INF = math.inf
pytestmark = pytest.mark.usefixtures("one_thread")

#: what the oracle's distances may be off by (rounding in the NNLS active-set steps), generously
ORACLE_TOL = 1e-6


def _least_squared_distance(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> float | None:
    """min ||x' - c||_2^2 over x' in [0, 1]^d with a x' <= b (None: infeasible), exactly up to
    rounding: Lawson and Hanson's least-distance program (min ||v|| s.t. g v >= h, v = x' - c)
    through their NNLS (scipy's), a finite active-set method."""
    d = len(c)
    g = np.vstack([-a, np.eye(d), -np.eye(d)])  # a x' <= b, x' >= 0, x' <= 1 in v
    h = np.concatenate([a @ c - b, -c, c - 1])
    e = np.vstack([g.T, h[None, :]])
    f = np.zeros(d + 1)
    f[-1] = 1.0
    u, _ = nnls(e, f, maxiter=50 * len(h))
    r = e @ u - f
    # At NNLS's optimum ||r||^2 = -r_{d+1} and the program's minimum is ||v||^2 = -1/r_{d+1} - 1, so
    # r_{d+1} -> 0 means infeasible. A feasible x' lies in the box, ||v||^2 <= d: a larger value is
    # an empty region whose residual only rounding kept from 0 (a fixed 1e-12 cut-off let those
    # through as far too short distances, with v violating the rows).
    if not r[-1] < 0 or -1.0 / r[-1] - 1.0 > d * (1 + 1e-9):
        return None
    v = -r[:d] / r[-1]
    x_near = c + v
    assert (a @ x_near <= b + 1e-7).all() and (x_near >= -1e-7).all() and (x_near <= 1 + 1e-7).all()
    return float(v @ v)


def _squared_distance(c: np.ndarray, rows: list[tuple[np.ndarray, float]]) -> float | None:
    return _least_squared_distance(c, np.array([r[0] for r in rows]).reshape(-1, len(c)),
                                   np.array([r[1] for r in rows]))


def exact_l2_distance(net: ReLUNet, x: torch.Tensor, y: int) -> float:
    """min ||x' - x||_2 over x' in [0, 1]^d with f_s(x') >= f_y(x') for some s != y, for a
    Linear-only net: depth first over the units' signs (x's own first); a pattern's region is
    a polytope (rows a x' <= b), pruned when empty or farther than the best distance so far."""
    layers = [(l.weight.detach().double().numpy(), l.bias.detach().double().numpy()) for l in net.layers]
    c = x.reshape(-1).double().numpy()
    with torch.no_grad():
        if int(net(x.reshape(1, -1).double()).argmax()) != y:
            return 0.0
    best = INF

    def visit(k: int, a: np.ndarray, b: np.ndarray, signs: tuple, rows: list) -> None:
        """z_k = a x' + b on the region of ``rows``; ``signs``: layer k's units fixed so far."""
        nonlocal best
        if k == len(layers) - 1:  # the logits: f_s - f_y >= 0, one target at a time
            for s in range(len(b)):
                sq = None if s == y else _squared_distance(c, rows + [(a[y] - a[s], b[s] - b[y])])
                if sq is not None:
                    best = min(best, math.sqrt(sq))
            return
        j = len(signs)
        if j == len(b):  # layer k fixed: compose the next layer's affine map
            on = np.array(signs)
            w, bias = layers[k + 1]
            visit(k + 1, w @ (on[:, None] * a), w @ (on * b) + bias, (), rows)
            return
        own = float(a[j] @ c + b[j]) > 0
        for active in (own, not own):
            new = rows + [(-a[j], b[j]) if active else (a[j], -b[j])]  # z_j >= 0, or z_j <= 0
            sq = _squared_distance(c, new)
            if sq is not None and math.sqrt(sq) <= best + ORACLE_TOL:
                visit(k, a, b, signs + (float(active),), new)

    visit(0, *layers[0], (), [])
    return best


def _net(seed: int, d: int = 4, widths=(8, 8)) -> ReLUNet:
    return through_the_box(mlp((d,), 3, widths).double(), seed)


def _points(net: ReLUNet, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, net.input_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        return x, net(x).argmax(1)


def _is_counterexample(net, x, point, y, eps) -> bool:
    shape = (1, *net.input_shape)
    return bool(check_adversarial(net, x.reshape(shape), point.reshape(shape), torch.tensor([y]), eps, 2.0)[0])


def test_the_oracle_matches_a_grid_in_2d():
    """The oracle itself: in 2-D no misclassified grid point is closer, and one lies within a
    grid step of its distance."""
    net = _net(0, d=2)
    x, y = _points(net, 3, seed=1)
    g = torch.linspace(0, 1, 401, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        labels = net(grid).argmax(1)
    for i in range(3):
        exact = exact_l2_distance(net, x[i], int(y[i]))
        nearest = float(torch.linalg.vector_norm(grid[labels != y[i]] - x[i], dim=1).min())
        assert exact <= nearest + ORACLE_TOL and nearest <= exact + 2**0.5 / 400


@pytest.mark.parametrize("seed", [0, 1])
def test_min_distance_brackets_the_exact_distance(seed):
    """mip_min_distance(p=2): lower <= exact <= distance, within DISTANCE_TOL, and its point
    passes check_adversarial at its distance."""
    net = _net(seed)
    x, y = _points(net, 3, seed=10 + seed)
    for i in range(3):
        exact = exact_l2_distance(net, x[i], int(y[i]))
        md = mip_min_distance(net, x[i], int(y[i]), 2.0, time_limit=300)
        assert not md.timed_out and md.optimal, md
        assert md.lower <= exact + ORACLE_TOL and exact <= md.distance + ORACLE_TOL, (md, exact)
        assert md.distance <= md.lower + DISTANCE_TOL
        assert _is_counterexample(net, x[i], md.point, int(y[i]), md.distance)


def test_mip_verify_agrees_with_the_exact_distance():
    """Robust just below the exact distance, attacked just above it with a point that passes
    check_adversarial (the exact distance from the oracle, not from the MIP)."""
    net = _net(1)
    x, y = _points(net, 3, seed=11)
    for i in range(3):
        d = exact_l2_distance(net, x[i], int(y[i]))
        assert 0 < d < INF
        for factor, expected in ((0.95, "robust"), (1.05, "attacked")):
            res = mip_verify(net, x[i], int(y[i]), factor * d, 2.0, time_limit=300)
            assert res.status == expected, (i, factor, res)
            if expected == "attacked":
                assert _is_counterexample(net, x[i], res.counterexample, int(y[i]), factor * d)
            else:
                assert res.counterexample is None and res.objective_bound > 0


def test_the_cascade_decides_every_point_both_ways():
    """Bounds and attacks off, l_2 only: the MIP leaves no point undecided on a tiny net;
    certified exactly where the exact distance exceeds eps, attacked (with a counterexample
    within eps) exactly where it does not."""
    net = _net(0)
    x, y = _points(net, 6, seed=20)
    exact = [exact_l2_distance(net, x[i], int(y[i])) for i in range(len(x))]
    middle = sorted(exact)[len(exact) // 2 - 1 : len(exact) // 2 + 1]
    eps = sum(middle) / 2  # half the points on either side
    assert min(abs(d - eps) for d in exact) > 1e-4
    options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300, mip_norms=("l2",))
    records = certify_batch(net, list(range(len(x))), x, y, {"l2": eps}, options, defaultdict(float))
    by_mip = 0
    for r, d in zip(records, exact):
        assert r.status in (CERTIFIED, ATTACKED), r
        assert (r.status == CERTIFIED) == (d > eps), (r, d)
        if r.status == ATTACKED:
            assert d - ORACLE_TOL <= r.adversarial_norm <= eps, (r, d)
        by_mip += "mip" in (r.certified_by, r.attacked_by)
    assert by_mip >= 4


# --- the decision rules, with the solver replaced ---------------------------------------------


def _fake_scip(monkeypatch, statuses: list[str], point=None, dual: float = -1.0) -> list[str]:
    """SCIP's solves and resumes answer ``statuses`` in turn (the last one repeated), with
    ``point`` (the input columns) as the best solution; returns the calls made."""
    calls = []

    def answer(*args, **kwargs):
        calls.append(statuses[min(len(calls), len(statuses) - 1)])
        return calls[-1]

    monkeypatch.setattr(ScipProgram, "solve", answer)
    monkeypatch.setattr(ScipProgram, "resume", answer)
    monkeypatch.setattr(ScipProgram, "dual_bound", lambda self: dual)
    monkeypatch.setattr(ScipProgram, "point", lambda self, cols: None if point is None else point.numpy().copy())
    return calls


def test_only_a_proven_infeasibility_certifies(monkeypatch):
    """A time-out, with or without a point, a solver point beyond the ball or correctly
    classified, a stop for another reason: never 'robust', never 'attacked'; a point reaching
    the target that fails the check resumes the search. Only 'infeasible' certifies."""
    net = _net(0)
    x, y = _points(net, 4, seed=30)
    xi, yi = x[3], int(y[3])
    d = exact_l2_distance(net, xi, yi)
    far = mip_min_distance(net, xi, yi, 2.0, time_limit=300).point  # misclassified, at distance d
    eps = 0.9 * d  # robust, but not by CROWN alone: the solver is asked
    assert not certify(net, x[3:], y[3:], eps, 2.0, "crown")
    for statuses, point, expected in [
        (["timelimit"], None, "timeout"),
        (["timelimit"], xi, "timeout"),
        (["timelimit"], far, "timeout"),  # beyond the ball: pulled into it, it is classified y
        (["optimal"], far, "unknown"),
        (["optimal"], xi, "unknown"),
        (["primallimit", "optimal"], far, "unknown"),  # target 'reached', then minimised
        (["primallimit", "timelimit"], xi, "timeout"),
        (["userinterrupt"], None, "unknown"),
    ]:
        calls = _fake_scip(monkeypatch, statuses, point)
        res = mip_verify(net, xi, yi, eps, 2.0, time_limit=300)
        assert res.status == expected and res.counterexample is None, (statuses, res)
        assert len(calls) >= len(statuses), (statuses, calls)
    _fake_scip(monkeypatch, ["infeasible"])
    assert mip_verify(net, xi, yi, eps, 2.0, time_limit=300).status == "robust"
    _fake_scip(monkeypatch, ["optimal"], xi, dual=0.0)  # a correctly classified 'minimiser'
    none = mip_min_distance(net, xi, yi, 2.0, time_limit=300)
    assert none.point is None and none.distance == INF and not none.optimal


def test_a_time_limit_never_certifies():
    """A real solver stopped far too early on a net whose point a checked PGD point attacks:
    any undecided outcome or 'attacked' with a checked point, never 'robust'."""
    net = through_the_box(mlp((10,), 3, (24, 24)).double(), 0)
    x = torch.rand(1, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    torch.manual_seed(0)
    adv = attack(net, x, y, 0.5, 2.0, strength="fast")
    assert check_adversarial(net, x, adv, y, 0.5, 2.0).all()
    res = mip_verify(net, x[0], int(y[0]), 0.5, 2.0, time_limit=0.01)
    assert res.status in ("timeout", "unknown", "attacked"), res
    if res.status == "attacked":
        assert _is_counterexample(net, x[0], res.counterexample, int(y[0]), 0.5)


def _linear_net(margin: float) -> tuple[ReLUNet, torch.Tensor, float]:
    """A 2-class linear net, centre x and radius whose ball lies inside the box, with the
    minimum of f_0 - f_1 over the ball equal to ``margin`` (up to rounding)."""
    net = ReLUNet([torch.nn.Linear(4, 2)], (4,)).double()
    x, eps = torch.full((4,), 0.5, dtype=torch.float64), 0.2
    with torch.no_grad():
        w = torch.tensor([[0.3, -0.7, 0.2, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
        net.layers[0].weight.copy_(w)
        net.layers[0].bias.copy_(torch.tensor([margin - float(w[0] @ x) + eps * float(w[0].norm()), 0.0]))
    return net, x, eps


def test_a_near_tie_is_not_certified():
    """Margins in (0, tol] count as ties: where the ball's minimum margin is +5e-7 (below the
    1e-6 tolerance, above SCIP's feasibility tolerance) the point is not certified, though no
    point of the ball is misclassified; at +1e-5 it is. (CROWN's bound is exact on a linear
    net, so the target is skipped only above the tolerance.)"""
    net, x, eps = _linear_net(5e-7)
    assert mip_verify(net, x, 0, eps, 2.0, time_limit=300).status == "unknown"
    net, x, eps = _linear_net(1e-5)
    assert mip_verify(net, x, 0, eps, 2.0, time_limit=300).status == "robust"


def test_rounding_level_margin_bounds_do_not_skip_a_target():
    """A ball covering the box, whose minimising corner is misclassified in float64 while
    CROWN's margin bound is a rounding-level positive on some seeds: the MIP finds the corner."""
    x = torch.full((6,), 0.5, dtype=torch.float64)
    eps = 6**0.5 / 2 * 1.01  # the box's corners lie at 6^0.5 / 2 from its centre
    cases = 0
    for seed in range(40):
        net, corner = tied_linear_net(seed)
        with torch.no_grad():
            if net(x[None]).argmax(1).item() != 0 or not _is_counterexample(net, x, corner, 0, eps):
                continue
        cases += 1
        res = mip_verify(net, x, 0, eps, 2.0, time_limit=300)
        assert res.status == "attacked", (seed, res)
        assert _is_counterexample(net, x, res.counterexample, 0, eps)
    assert cases >= 5


def test_the_square_root_is_rounded_down():
    """sqrt_down(v)^2 <= v exactly (rational arithmetic), within two ulps of the true root."""
    gen = np.random.default_rng(0)
    values = np.concatenate([gen.random(2000), gen.random(500) * 1e-12, [0.0, 1.0, 0.25, 2.0, 1e-300]])
    rounded_up = 0
    for v in values.tolist():
        r = sqrt_down(v)
        assert Fraction(r) ** 2 <= Fraction(v), v
        assert v == 0.0 or Fraction(math.nextafter(math.nextafter(r, INF), INF)) ** 2 > Fraction(v), v
        rounded_up += Fraction(math.sqrt(v)) ** 2 > Fraction(v)
    assert rounded_up > 100  # plain sqrt would have failed
    assert sqrt_down(-1.0) == 0.0 and sqrt_down(-INF) == 0.0


def test_the_solver_prints_nothing(capfd):
    net = _net(0)
    x, y = _points(net, 1, seed=30)
    mip_verify(net, x[0], int(y[0]), 0.1, 2.0, time_limit=300)
    mip_min_distance(net, x[0], int(y[0]), 2.0, time_limit=300)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --- the option ---------------------------------------------------------------------------------


def test_mip_norms_picks_the_norms_the_mip_runs_for(monkeypatch):
    """Bounds and attacks off: with mip_norms=[l1] no l_2 job reaches the solver (the points
    stay undecided in l_2); by default l_2 jobs do."""
    net = _net(0)
    x, y = _points(net, 4, seed=20)
    seen = []
    monkeypatch.setattr("mmru.certification.mip_pool.mip_verify",
                        lambda net64, xq, yq, eps, p, time_limit, **kw: seen.append(p) or mip_verify(
                            net64, xq, yq, eps, p, time_limit=time_limit, **kw))
    eps = {"l1": 0.1, "l2": 0.1}
    for norms, expected in ((("l1",), {1.0}), (("l1", "l2", "linf"), {1.0, 2.0})):
        seen.clear()
        options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300, mip_norms=norms)
        records = certify_batch(net, list(range(len(x))), x, y, eps, options, defaultdict(float))
        assert set(seen) == expected, (norms, seen)
        if norms == ("l1",):
            assert all(r.certified_by != "mip" and r.attacked_by != "mip" for r in records if r.norm == "l2")


def test_mip_tighten_norms_picks_the_milps_that_tighten_first(monkeypatch):
    """By default only the l_inf MILPs tighten their big-M constants by LP; mip_tighten_norms=[l1, linf]
    both, [] none; the recipe records the choice and a bad name is refused."""
    net = _net(0)
    x, y = _points(net, 2, seed=20)
    seen = {}
    monkeypatch.setattr("mmru.certification.mip_pool.mip_verify",
                        lambda net64, xq, yq, eps, p, time_limit, tighten_bounds, **kw: seen.setdefault(
                            p, set()).add(tighten_bounds) or mip_verify(net64, xq, yq, eps, p, time_limit=time_limit,
                                                                        tighten_bounds=tighten_bounds, **kw))
    eps = {"l1": 0.1, "linf": 0.02}
    for norms, expected in ((None, {1.0: {False}, INF: {True}}), (("l1", "linf"), {1.0: {True}, INF: {True}}),
                            ((), {1.0: {False}, INF: {False}})):
        seen.clear()
        extra = {} if norms is None else {"mip_tighten_norms": norms}
        options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300, **extra)
        certify_batch(net, list(range(len(x))), x, y, eps, options, defaultdict(float))
        assert seen == expected, (norms, seen)
    from mmru.certification.runner import _recipe

    assert _recipe({}, CascadeOptions(), [], 0.0, 1)["mip_tighten_norms"] == ["linf"]
    assert compose_config("certify", ["ckpt=x.ckpt"]).mip_tighten_norms == ["linf"]
    with pytest.raises(ConfigError, match=r"^mip_tighten_norms must be a list of distinct names from l1, linf"):
        validate_certify_config(compose_config("certify", ["ckpt=x.ckpt", "mip_tighten_norms=[l2]"]))
    with pytest.raises(ConfigError, match="mip_tighten_norms must be"):
        mmru.certify(mlp((4,), 3, (8,)), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), {"l1": 0.1},
                     mip_tighten_norms=["l2"])


def test_mip_scip_norms_picks_the_solver_of_each_milp(monkeypatch):
    """By default SCIP solves the l1 MILPs and HiGHS the l_inf ones (l2: SCIP always);
    mip_scip_norms=[l1, linf] sends both to SCIP, [] both to HiGHS; the decisions stay those of a
    correct solver, the recipe records the choice and a bad name is refused."""
    net = _net(0)
    x, y = _points(net, 2, seed=20)
    seen = {}
    monkeypatch.setattr("mmru.certification.mip_pool.mip_verify",
                        lambda net64, xq, yq, eps, p, time_limit, solver, **kw: seen.setdefault(
                            p, set()).add(solver) or mip_verify(net64, xq, yq, eps, p, time_limit=time_limit,
                                                                solver=solver, **kw))
    eps = {"l1": 0.1, "l2": 0.1, "linf": 0.02}
    decided = {}
    for norms, expected in ((None, {1.0: {"scip"}, 2.0: {"scip"}, INF: {"highs"}}),
                            (("l1", "linf"), {1.0: {"scip"}, 2.0: {"scip"}, INF: {"scip"}}),
                            ((), {1.0: {"highs"}, 2.0: {"scip"}, INF: {"highs"}})):
        seen.clear()
        extra = {} if norms is None else {"mip_scip_norms": norms}
        options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300, **extra)
        records = certify_batch(net, list(range(len(x))), x, y, eps, options, defaultdict(float))
        assert seen == expected, (norms, seen)
        outcome = {(r.index, r.norm): r.status for r in records}
        assert "undecided" not in outcome.values()
        assert decided.setdefault("first", outcome) == outcome  # both solvers decide alike
    from mmru.certification.runner import _recipe

    assert _recipe({}, CascadeOptions(), [], 0.0, 1)["mip_scip_norms"] == ["l1"]
    assert compose_config("certify", ["ckpt=x.ckpt"]).mip_scip_norms == ["l1"]
    with pytest.raises(ConfigError, match=r"^mip_scip_norms must be a list of distinct names from l1, linf"):
        validate_certify_config(compose_config("certify", ["ckpt=x.ckpt", "mip_scip_norms=[l2]"]))
    with pytest.raises(ConfigError, match="mip_scip_norms must be"):
        mmru.certify(mlp((4,), 3, (8,)), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), {"l1": 0.1},
                     mip_scip_norms=["l2"])
    with pytest.raises(ValueError, match="solver must be 'highs' or 'scip'"):
        mip_verify(net, x[0], int(y[0]), 0.1, 1.0, solver="gurobi")


@pytest.mark.parametrize("override, value", [
    ("[l1,l3]", ["l1", "l3"]), ("[]", []), ("[l2,l2]", ["l2", "l2"]), ("l2", "l2"),
])
def test_bad_mip_norms_are_refused_in_one_sentence(override, value):
    with pytest.raises(ConfigError, match=r"^mip_norms must be a non-empty list of distinct names from l1, l2, "
                                          r"linf, got .*\.$"):
        validate_certify_config(compose_config("certify", ["ckpt=x.ckpt", f"mip_norms={override}"]))
    with pytest.raises(ConfigError, match="mip_norms must be"):
        mmru.certify(mlp((4,), 3, (8,)), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), {"l2": 0.1},
                     mip_norms=value)


def test_the_recipe_records_the_mip_norms():
    from mmru.certification.runner import _recipe

    options = CascadeOptions(mip_norms=("l2", "linf"))
    assert _recipe({}, options, [], 0.0, 1)["mip_norms"] == ["l2", "linf"]
    assert compose_config("certify", ["ckpt=x.ckpt"]).mip_norms == ["l1", "l2", "linf"]


def test_two_workers_give_the_records_of_one_process():
    """The pool runs the l_2 jobs (MIPJob and the radii's RadiusJob with p = 2) in its workers
    with the records one process gives; bounds and attacks off, so the MIP decides."""
    from mmru.certification.mip_pool import MIPPool

    net = _net(3)
    x, y = _points(net, 6, seed=7)
    options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300, radii=True,
                             mip_norms=("l2",))
    runs = []
    for workers in (1, 2):
        with MIPPool(workers) as pool:
            records = certify_batch(net, list(range(len(x))), x, y, {"l2": 0.15}, options, defaultdict(float), pool)
        runs.append([{k: v for k, v in vars(r).items() if k != "seconds"} for r in records])
    assert runs[0] == runs[1]
    assert {r["status"] for r in runs[1] if "mip" in (r["certified_by"], r["attacked_by"])} == {CERTIFIED, ATTACKED}
    assert any("mip" in (r["radii"] or {}) for r in runs[1])  # the radii's distance searches ran
