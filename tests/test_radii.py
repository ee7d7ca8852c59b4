"""Certified radii per point, norm and method (mmru.certification.radii) on tiny nets, against
exact minimal adversarial distances; per-point eps in the bounds; old records; the option."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
import torch

from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.curves import robustness_curves
from mmru.certification.radii import (
    CURVE_EXTENT,
    REL_PRECISION,
    RadiusJob,
    bisect_radius,
    mip_distance_slack,
    mip_radius,
)
from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED, PointRecord, load_records, summarize
from mmru.errors import ConfigError
from mmru.models import mlp
from mmru.training import compose_config
from mmru.validation import validate_certify_config
from mmru.verify import certify, mip_min_distance, rounding_tolerance
from mmru.verify.bounds import hidden_bounds, input_ball
from mmru.verify.mip import MARGIN_TOL
from tiny_nets import through_the_box

INF = math.inf
NORMS = {"l1": 1.0, "l2": 2.0, "linf": INF}
EPS = {"l1": 0.08, "l2": 0.06, "linf": 0.05}
#: HiGHS's answers hold up to its tolerances (as in test_certify_soundness)
MIP_SLACK = 1e-6

pytestmark = pytest.mark.usefixtures("one_thread")


def _net_and_points(d: int, seed: int, n: int = 8):
    net = through_the_box(mlp((d,), 3, (8, 8)), seed).float().eval()
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def test_per_point_eps_is_each_points_own_ball():
    net, x, y = _net_and_points(6, 3, n=6)
    net64, x64 = net.double(), x.double()
    eps = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.2, 0.4], dtype=torch.float64)
    for p in NORMS.values():
        for method in ("kw", "crown"):
            together = certify(net64, x64, y, eps, p, method)
            alone = torch.cat([certify(net64, x64[i : i + 1], y[i : i + 1], float(eps[i]), p, method)
                               for i in range(6)])
            assert together.tolist() == alone.tolist(), (p, method)
            assert together.any() and not together.all(), (p, method)  # both outcomes occur


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_bisection_finds_a_certified_radius_within_its_precision(p):
    net, x, y = _net_and_points(5, 2, n=8)
    net64, x64 = net.double(), x.double()
    eps = 0.1 if p == 1.0 else 0.05
    cap = CURVE_EXTENT * eps
    zeros = torch.zeros(8, dtype=torch.float64)
    found = bisect_radius(net64, x64, y, p, "kw", zeros, torch.full((8,), cap, dtype=torch.float64), cap, eps)
    inside = (found > 0) & (found < cap)
    assert inside.any()
    # the radius returned was certified (not the bracket's upper end) ...
    assert certify(net64, x64[found > 0], y[found > 0], found[found > 0], p, "kw").all()
    # ... and KW (monotone in eps) certifies nothing one precision step above it
    above = found[inside] + REL_PRECISION * cap * 1.0001
    assert not certify(net64, x64[inside], y[inside], above, p, "kw").any()


def _grid_distances(net, x, y, steps=601):
    """Per norm and point, min ||x' - x||_p over the misclassified points x' of a grid on
    [0, 1]^2: an upper bound on r_p(x), and close to it (tests allow ``GRID_SLACK`` steps)."""
    g = torch.linspace(0, 1, steps, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        wrong = net.double()(grid).argmax(1)
    net.float()
    out = {name: torch.full((len(x),), INF, dtype=torch.float64) for name in NORMS}
    for i in range(len(x)):
        dx, dy = (grid[wrong != y[i]] - x[i].double()).abs().unbind(1)
        if len(dx):
            out["l1"][i], out["l2"][i] = (dx + dy).min(), torch.hypot(dx, dy).min()
            out["linf"][i] = dx.maximum(dy).min()
    return out, 1 / (steps - 1)


#: r_p(x) >= grid distance - GRID_SLACK h (thin adversarial wedges need more than one step)
GRID_SLACK = 4


@pytest.mark.parametrize("seed", [0, 3])
def test_radii_lie_below_the_exact_distance_and_counterexamples_above(seed):
    """In 2-D a fine grid gives r_p(x) to within its step h in every norm."""
    net, x, y = _net_and_points(2, seed, n=6)
    exact, h = _grid_distances(net, x, y)
    options = CascadeOptions(attack="fast", mip_time_limit=20, radii=True)
    records = certify_batch(net, list(range(6)), x, y, EPS, options, defaultdict(float))
    used = defaultdict(int)
    for r in records:
        assert r.radii and r.radii["region"] == r.region_radius
        assert r.certified_radius == max(r.radii.values())
        assert r.adversarial_norm is None or r.certified_radius <= r.adversarial_norm, r
        closed = r.certified_by != "region"
        at_eps = r.certified_radius > r.eps or (closed and r.certified_radius >= r.eps)
        assert (r.status == CERTIFIED) == at_eps, r  # the status follows the radii
        assert (r.status == ATTACKED) == (r.adversarial_norm is not None and r.adversarial_norm <= r.eps), r
        true = float(exact[r.norm][r.index])  # r_p(x) lies in [true - GRID_SLACK h, true]
        for method, radius in r.radii.items():
            used[method] += 1
            assert radius <= true, (method, r, true)
        if r.adversarial_norm is not None:
            assert r.adversarial_norm >= true - GRID_SLACK * h, (r, true)
        if "mip" in r.radii:  # exact up to the grid's step, or radius >= the search's cap
            assert r.radii["mip"] >= min(true - GRID_SLACK * h, CURVE_EXTENT * r.eps) - 1e-4, (r, true)
            used["mip close"] += 1
    assert all(used[m] for m in ("kw", "crown", "mip close")), used  # every method contributed


def test_the_mip_radius_is_shrunk_below_the_solvers_bound():
    """The MIP's radius is the solver's bound over f_y - f_s <= +tol (mip_verify's near-tie
    policy), lowered by the feasibility slack and rounded down; below the boundary's bound."""
    net, x, y = _net_and_points(5, 2)
    net64 = net.double()
    checked = 0
    for i in range(8):
        for p in (1.0, INF):
            xi = x[i : i + 1].double()
            cap = CURVE_EXTENT * (EPS["l1"] if p == 1.0 else EPS["linf"])
            boundary = mip_min_distance(net64, xi, int(y[i]), p, 60.0, max_radius=cap)  # f_y - f_s <= 0
            if not boundary.lower < cap:
                continue
            ball = input_ball(xi, cap, p)
            passes = hidden_bounds(net64, ball, "crown")
            tol = max(MARGIN_TOL, float(rounding_tolerance(net64, ball, passes)[0]))
            near = mip_min_distance(net64, xi, int(y[i]), p, 60.0, bounds=passes["crown"], max_radius=cap,
                                    margin_tol=tol)
            outcome = mip_radius(net64, RadiusJob(xi, int(y[i]), p, cap, 60.0))
            assert outcome.counterexample is not None
            assert outcome.radius == math.nextafter(near.lower - mip_distance_slack(5, p), 0.0), (i, p)
            assert boundary.lower - 1e-4 <= outcome.radius < boundary.lower, (i, p)
            checked += 1
            if checked == 3:
                return
    pytest.fail("fewer than 3 points have an adversarial point within the cap")


def test_status_follows_radii_the_cascade_did_not_prove(monkeypatch):
    """With the cascade's own MIP stage silenced, the radii stage's MIP decides the points; the
    statuses and the curves at eps follow and agree with the summary."""
    monkeypatch.setattr("mmru.certification.cascade._mip", lambda *args, **kwargs: None)
    net, x, y = _net_and_points(5, 2)
    eps = {"l1": EPS["l1"], "linf": EPS["linf"]}
    options = CascadeOptions(bounds=(), attack="none", radii=True)
    records = certify_batch(net, list(range(8)), x, y, eps, options, defaultdict(float))
    by_mip = [r for r in records if r.certified_by == "mip" or r.attacked_by == "mip"]
    assert {r.status for r in by_mip} == {CERTIFIED, ATTACKED}
    assert all(r.status != UNDECIDED for r in by_mip)
    summary = summarize(records, eps, test_error=None)
    curves = robustness_curves(records, eps)
    for norm, radius in eps.items():
        at = curves[norm]["eps"].index(radius)
        assert curves[norm]["certified"][at] == summary[norm]["ub"]
        assert curves[norm]["empirical"][at] == summary[norm]["lb"]
    at = curves["union"]["eps"].index(1.0)
    assert curves["union"]["certified"][at] == summary["union_ub"]
    assert curves["union"]["empirical"][at] == summary["union_lb"]


def _record(index, norm, status, radius, by, adv=None, eps=0.2):
    return PointRecord(index=index, norm=norm, eps=eps, label=0, correct=True, status=status, region_radius=0.0,
                       certified_radius=radius, certified_by=by, adversarial_norm=adv,
                       attacked_by=None if adv is None else "pgd", seconds=0.0)


def test_union_curve_needs_every_norm_and_breaks_on_any():
    eps = {"l1": 0.2, "linf": 0.1}  # grid t = 0, 0.5, 1, 1.5, 2
    records = [
        _record(0, "l1", CERTIFIED, 0.45, "kw"), _record(0, "linf", CERTIFIED, 0.12, "crown", eps=0.1),
        _record(1, "l1", CERTIFIED, 0.4, "kw"), _record(1, "linf", ATTACKED, 0.03, "region", adv=0.07, eps=0.1),
        _record(2, "l1", UNDECIDED, 0.15, "mip", adv=0.35), _record(2, "linf", CERTIFIED, 0.2, "mip", eps=0.1),
    ]
    union = robustness_curves(records, eps, points=5)["union"]
    assert union["eps"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    # robust in every norm at t: point 0 up to t = 1.2, point 1 below t = 0.3, point 2 up to t = 0.75
    assert union["certified"] == [0.0, 1 / 3, 2 / 3, 1.0, 1.0]
    # broken in some norm at t: point 1 from t = 0.7 (l∞), point 2 from t = 1.75 (l1)
    assert union["empirical"] == [0.0, 0.0, 1 / 3, 1 / 3, 2 / 3]


def test_records_without_radii_still_load(tmp_path):
    old = {"index": 3, "norm": "l1", "eps": 0.1, "label": 2, "correct": True, "status": CERTIFIED,
           "region_radius": 0.2, "certified_radius": 0.2, "certified_by": "region", "adversarial_norm": None,
           "attacked_by": None, "seconds": 0.5}
    path = tmp_path / "points.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = load_records(path)
    assert record.radii is None and record.certified_radius == 0.2
    assert json.loads(record.to_json()) == {**old, "radii": None}


def test_radii_option_is_checked():
    assert compose_config("certify", [])["radii"] in (True, False)
    with pytest.raises(ConfigError, match=r"^radii must be true or false, got 'maybe'\.$"):
        validate_certify_config(compose_config("certify", ["ckpt=x.ckpt", "radii=maybe"]))


def test_resume_keeps_records_with_and_without_radii(tmp_path):
    """A run resumed with radii=true over records of an older run keeps both kinds as they were."""
    from mmru.certification.runner import _resume

    path = tmp_path / "points.jsonl"
    old = {"index": 0, "norm": "l1", "eps": 0.1, "label": 2, "correct": True, "status": UNDECIDED,
           "region_radius": 0.05, "certified_radius": 0.05, "certified_by": "region", "adversarial_norm": None,
           "attacked_by": None, "seconds": 0.5}
    new = _record(1, "l1", CERTIFIED, 0.15, "crown", eps=0.1)
    new.radii = {"region": 0.02, "kw": 0.14, "crown": 0.15}
    path.write_text(json.dumps(old) + "\n" + new.to_json() + "\n" + '{"index": 2, "no')  # a torn last line
    kept = _resume(path, {"l1": 0.1}, [0, 1, 2])
    assert [(r.index, r.radii) for r in kept] == [(0, None), (1, new.radii)]
    assert load_records(path) == kept


def test_mip_radius_where_every_unit_is_stable_on_the_capped_ball():
    """No binary left: HiGHS solves an LP and reports no MIP dual bound; its optimum is the bound."""
    net, x, y = _net_and_points(2, 1, n=3)
    net64, xi = net.double(), x[2:3].double()
    uncapped = mip_min_distance(net64, xi, int(y[2]), INF, 60.0)
    assert uncapped.optimal and uncapped.distance < 0.1
    outcome = mip_radius(net64, RadiusJob(xi, int(y[2]), INF, 0.1, 60.0))
    assert uncapped.lower - 1e-4 <= outcome.radius < uncapped.lower
