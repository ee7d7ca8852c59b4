"""The MIP stage's outcomes, end to end: counterexamples it finds are kept (they pass the
project's one check, ``check_adversarial``, and the cascade counts them), near-ties do not
stop its search, rounding-level margin bounds do not skip a target, a foreign HiGHS thread
setting does not break it, it prints nothing; and every undecided outcome (time-out,
unknown, a solver point that fails the check) is recorded as undecided, never certified."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import defaultdict
from types import SimpleNamespace

import highspy
import pytest
import torch
from torch import nn

from mmru.attacks import adversarial_norm, check_adversarial
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED
from mmru.models import ReLUNet, mlp
from mmru.verify import MIPResult, mip_min_distance, mip_verify
from mmru.verify import milp
from tiny_nets import through_the_box, tied_linear_net

INF = math.inf
pytestmark = pytest.mark.usefixtures("one_thread")


def _is_counterexample(net, x, point, y, eps, p) -> bool:
    shape = (1, *net.input_shape)
    return bool(check_adversarial(net, x.reshape(shape), point.reshape(shape), torch.tensor([y]), eps, p)[0])


def _tiny(seed: int = 0, d: int = 4) -> tuple[ReLUNet, torch.Tensor, torch.Tensor]:
    net = through_the_box(mlp((d,), 3, (8, 8)).double(), seed)
    x = torch.rand(6, d, generator=torch.Generator().manual_seed(seed + 20), dtype=torch.float64)
    with torch.no_grad():
        return net, x, net(x).argmax(1)


def _exact(net, x, y, p):
    md = mip_min_distance(net, x, y, p, time_limit=300)
    if md.timed_out:
        pytest.skip(f"HiGHS reached its 300 s time limit on a tiny MILP (p={p})")
    assert md.optimal
    return md


# --- counterexamples are kept (issue 8 items 3-5) ---------------------------------------


@pytest.mark.parametrize("p", [INF, 1.0])
def test_the_cascade_keeps_every_mip_counterexample(p):
    """With bound propagation and attacks off, every point whose exact distance is below eps
    is ATTACKED by the MIP, with the counterexample's own norm; those above it are CERTIFIED
    by the MIP. (Before: HiGHS's vertices on the ball's surface failed the cascade's re-check
    and such points stayed undecided.)"""
    net, x, y = _tiny()
    exact = [_exact(net, x[i], int(y[i]), p).distance for i in range(len(x))]
    eps = sorted(exact)[len(exact) // 2]  # half the points on either side
    options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300)
    name = "linf" if p == INF else "l1"
    records = certify_batch(net, list(range(len(x))), x, y, {name: eps}, options, defaultdict(float))
    by_mip = 0
    for r, d in zip(records, exact):
        if r.attacked_by == "region" or (r.status == CERTIFIED and r.certified_by == "region"):
            continue  # decided before the MIP
        by_mip += 1
        if d < eps * (1 - 1e-6):
            assert r.status == ATTACKED and r.attacked_by == "mip", (r, d)
            assert d * (1 - 1e-6) <= r.adversarial_norm <= eps
        elif d > eps * (1 + 1e-6):
            assert r.status == CERTIFIED and r.certified_by == "mip", (r, d)
    assert by_mip >= 4


def _plateau_net(hidden: int = 20, d: int = 4) -> ReLUNet:
    """Two classes, f_0 = 0 and f_1 = sum_j c_j relu(w_j x - b_j) >= 0, every unit inactive
    within l1-distance 0.05 of the centre: the margin f_0 - f_1 is exactly 0 (a tie) on a
    neighbourhood of it and negative farther out, so the MILP's set {margin <= +tol} is full
    of ties, which HiGHS's first incumbent is."""
    gen = torch.Generator().manual_seed(0)
    net = ReLUNet([nn.Linear(d, hidden), nn.Linear(hidden, 2)], (d,)).double()
    centre = torch.full((d,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        w = torch.randn(hidden, d, generator=gen, dtype=torch.float64)
        w /= w.abs().sum(1, keepdim=True)
        net.layers[0].weight.copy_(w)
        net.layers[0].bias.copy_(-(w @ centre) - 0.05)
        net.layers[1].weight.copy_(torch.cat([torch.zeros(1, hidden), torch.rand(1, hidden, generator=gen)]))
        net.layers[1].bias.zero_()
    return net


def test_near_ties_do_not_stop_the_search():
    """At the centre (a tie, so not misclassified) and radius 0.2, points misclassified by a
    wide margin exist; the MIP must find one rather than give up on its first near-tie
    incumbent (before: 'unknown' for l_inf)."""
    net = _plateau_net()
    x = torch.full((4,), 0.5, dtype=torch.float64)
    for p in (INF, 1.0):
        res = mip_verify(net, x, 0, 0.2, p, time_limit=300)
        assert res.status == "attacked", (p, res)
        assert _is_counterexample(net, x, res.counterexample, 0, 0.2, p)


def test_rounding_level_margin_bounds_do_not_skip_a_target():
    """The l_inf ball of radius 0.6 around the box centre covers the box; its minimising
    corner is misclassified in float64 while CROWN's margin bound is a rounding-level
    positive on some seeds. The MIP skips a target only above its tolerance, so it finds
    the corner (before: skipped on bound > 0 and reported 'robust')."""
    x = torch.full((6,), 0.5, dtype=torch.float64)
    cases = 0
    for seed in range(40):
        net, corner = tied_linear_net(seed)
        with torch.no_grad():
            if net(x[None]).argmax(1).item() != 0 or not _is_counterexample(net, x, corner, 0, 1.0, INF):
                continue
        cases += 1
        res = mip_verify(net, x, 0, 0.6, INF, time_limit=300)
        assert res.status == "attacked", (seed, res)
        assert _is_counterexample(net, x, res.counterexample, 0, 0.6, INF)
    assert cases >= 5


def test_a_foreign_thread_setting_does_not_break_the_solver():
    """HiGHS's thread pool is process-wide: after anyone's run with threads=2 every threads=1
    run errored out ('Not Set', then 'unknown'). The MIP must still decide."""
    net, x, y = _tiny(1)
    md = _exact(net, x[0], int(y[0]), INF)
    highspy._Highs.resetGlobalScheduler(True)  # so that the next run sets the pool up
    foreign = highspy._Highs()
    foreign.setOptionValue("output_flag", False)
    foreign.setOptionValue("threads", 2)
    foreign.passModel(highspy.HighsLp())
    foreign.run()
    assert mip_verify(net, x[0], int(y[0]), 1.05 * md.distance, INF, time_limit=300).status == "attacked"
    assert mip_verify(net, x[0], int(y[0]), 0.95 * md.lower, INF, time_limit=300).status == "robust"


def test_the_solver_prints_nothing(capfd):
    """No HiGHS banner or log on the console, in a fresh process (the banner is printed once
    per process, at the first solver created with output on) and in this one."""
    code = (
        "import torch; from mmru.models import mlp; from mmru.verify import mip_verify, mip_min_distance;"
        "torch.manual_seed(0); net = mlp((4,), 3, (8,)).double(); x = torch.rand(4, dtype=torch.float64);"
        "y = int(net(x[None]).argmax()); mip_verify(net, x, y, 0.3, 1.0); mip_min_distance(net, x, y, float('inf'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "HiGHS" not in done.stdout + done.stderr and done.stdout == ""
    net, x, y = _tiny()
    mip_verify(net, x[0], int(y[0]), 0.3, 1.0, time_limit=300)
    out, err = capfd.readouterr()
    assert out == "" and "HiGHS" not in err


# --- undecided outcomes, with the solver replaced ----------------------------------------


def _fake_solver(monkeypatch, status, point=None, dual_bound=-1.0) -> list[int]:
    """Every MILP 'solve' answers ``status`` with ``point`` (the input columns) as its
    solution; returns the list that records the calls."""
    calls = []

    def solve(self, cost, extra_rows, time_limit, options):
        calls.append(1)
        values = [0.0] * len(self.col_lo)
        if point is not None:
            values[: point.numel()] = point.flatten().tolist()
        info = SimpleNamespace(mip_dual_bound=dual_bound, primal_solution_status=2 if point is not None else 0)
        return SimpleNamespace(getModelStatus=lambda: status, getInfo=lambda: info,
                               getSolution=lambda: SimpleNamespace(col_value=values, dual_valid=False))

    monkeypatch.setattr(milp.Program, "solve", solve)
    return calls


def test_solver_points_that_fail_the_check_are_rejected(monkeypatch):
    """A solver point beyond the ball (misclassified, but not once pulled into the ball), the
    centre itself (correctly classified), or a point that fails the check at a near-tie: never
    'attacked'; a time-out with no point: 'timeout'; none of them 'robust'."""
    net, x, y = _tiny()
    xi, yi = x[0], int(y[0])
    md = _exact(net, xi, yi, INF)
    eps = 0.99 * md.lower  # robust, but not by CROWN alone: the solver is asked
    Status = highspy.HighsModelStatus
    for status, point, expected in [
        (Status.kOptimal, md.point, "unknown"),  # at the exact distance, beyond the ball
        (Status.kObjectiveTarget, md.point, "unknown"),  # target 'reached', then minimised: same point
        (Status.kOptimal, xi, "unknown"),
        (Status.kTimeLimit, xi, "timeout"),
        (Status.kTimeLimit, None, "timeout"),
        (Status.kInterrupt, None, "unknown"),
    ]:
        calls = _fake_solver(monkeypatch, status, point)
        res = mip_verify(net, xi, yi, eps, INF, time_limit=300)
        assert calls and res.status == expected and res.counterexample is None, (status, res)
    _fake_solver(monkeypatch, Status.kInfeasible)  # the only way to 'robust'
    assert mip_verify(net, xi, yi, eps, INF, time_limit=300).status == "robust"
    _fake_solver(monkeypatch, Status.kOptimal, xi)  # a correctly classified 'minimiser'
    none = mip_min_distance(net, xi, yi, INF, time_limit=300)
    assert none.point is None and none.distance == INF and not none.optimal


def test_a_time_limit_never_certifies():
    """A real solver with a time limit far too short for a net with 48 unstable units: the
    outcome may be any undecided one or 'attacked' with a checked point, never 'robust' (a
    PGD counterexample shows the point is not robust)."""
    net = through_the_box(mlp((10,), 3, (24, 24)).double(), 0)
    x = torch.rand(1, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    from mmru.attacks import attack

    torch.manual_seed(0)
    adv = attack(net, x, y, 0.3, INF, strength="fast")
    assert check_adversarial(net, x, adv, y, 0.3, INF).all()
    res = mip_verify(net, x[0], int(y[0]), 0.3, INF, time_limit=0.01)
    assert res.status in ("timeout", "unknown", "attacked"), res
    if res.status == "attacked":
        assert _is_counterexample(net, x[0], res.counterexample, int(y[0]), 0.3, INF)


def test_the_cascade_records_each_mip_outcome(monkeypatch):
    """The cascade's record per MIP outcome: 'robust' certifies (by 'mip'); 'timeout' and
    'unknown' leave the point undecided, certified by nothing; 'attacked' counts only with a
    counterexample that passes check_adversarial, its norm then the record's."""
    net, x, y = _tiny()
    eps = 0.05
    xi = x.double()

    def attacked_at(i, point):
        return MIPResult("attacked", point.reshape(net.input_shape), 0.0, -1.0, 0)

    outcomes = {
        "robust": lambda i: MIPResult("robust", None, 0.0, 1e-6),
        "timeout": lambda i: MIPResult("timeout", None, 0.0, -1.0),
        "unknown": lambda i: MIPResult("unknown", None, 0.0, -1.0),
        "outside": lambda i: attacked_at(i, (xi[i] + 2 * eps).clamp(0, 1)),  # beyond the ball
        "correct": lambda i: attacked_at(i, xi[i]),  # the point itself, correctly classified
    }
    options = CascadeOptions(bounds=(), attack="none", mip=True)
    for name, outcome in outcomes.items():
        calls = []

        def fake(net64, xq, yq, eps_q, p, time_limit, tighten_bounds=True, solver="highs", outcome=outcome,
                 calls=calls):
            i = next(j for j in range(len(x)) if torch.equal(x[j].double(), xq.reshape(-1)))
            calls.append(i)
            return outcome(i)

        monkeypatch.setattr("mmru.certification.mip_pool.mip_verify", fake)
        records = certify_batch(net, list(range(len(x))), x, y, {"linf": eps}, options, defaultdict(float))
        assert calls, name
        for r in (records[i] for i in calls):
            if name == "robust":
                assert r.status == CERTIFIED and r.certified_by == "mip" and r.certified_radius == eps
            else:
                assert r.status == UNDECIDED and r.certified_by != "mip", (name, r)
                assert r.adversarial_norm is None and r.attacked_by is None, (name, r)
    # a genuine MIP counterexample is recorded with its own norm
    monkeypatch.undo()
    for i in range(len(x)):
        res = mip_verify(net, x[i], int(y[i]), 0.3, INF, time_limit=300)
        if res.status == "attacked":
            break
    else:
        pytest.fail("no point of the tiny net is attackable at l_inf radius 0.3")
    (r,) = certify_batch(net, [i], x[i : i + 1], y[i : i + 1], {"linf": 0.3}, options, defaultdict(float))
    if r.attacked_by != "region":
        assert r.status == ATTACKED and r.attacked_by == "mip"
        norm = float(adversarial_norm(x[i : i + 1], res.counterexample.reshape(1, -1), INF)[0])
        assert r.adversarial_norm == pytest.approx(norm, abs=1e-12)
