"""Soundness of the certification cascade against exact answers on tiny nets.

On 2-D and 5-D inputs the minimal adversarial distance inside the [0, 1] box is known exactly
(MIP for l_1, l_∞, used only when HiGHS proves it optimal; a fine grid for l_2 in 2-D). Every
certified radius must lie below it and every counterexample above it, whichever method
produced them; a status must agree with it; and the Table-1 row must bracket the true robust
error: LB <= fraction of points with r_p(x) <= eps <= UB.
"""

import math
from collections import defaultdict

import pytest
import torch

from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.records import ATTACKED, CERTIFIED, summarize
from mmru.models import mlp
from mmru.verify import mip_min_distance
from tiny_nets import through_the_box

INF = math.inf
#: the MIP of a net of 16 ReLUs on a 2-D / 5-D box takes milliseconds; this only guards a stall
EXACT_TIME_LIMIT = 300.0
#: HiGHS's answers hold up to its feasibility tolerance (1e-6 on the margin)
MIP_SLACK = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def _grid_l2_distance(net, x, y, steps=801):
    """min ||x' - x||_2 over misclassified grid points x' of [0, 1]^2; true value within h/sqrt(2)."""
    g = torch.linspace(0, 1, steps, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        logits = net.double()(grid)
    net.float()
    wrong = logits.argmax(1) != y
    return float((grid[wrong] - x.double()).norm(dim=1).min()) if wrong.any() else INF, (1 / (steps - 1)) / math.sqrt(2)


def exact_distance(net, x, y, p):
    """r_p(x) by MIP, as (value attained by a point, proven lower bound); skips unless optimal."""
    exact = mip_min_distance(net, x, y, p, time_limit=EXACT_TIME_LIMIT)
    if not exact.optimal:
        pytest.skip(f"HiGHS did not prove the l_{p} distance optimal within {EXACT_TIME_LIMIT:g} s (not a verdict)")
    return exact.distance, exact.lower


@pytest.mark.parametrize("d,seed", [(2, 0), (2, 1), (5, 2)])
def test_cascade_agrees_with_exact_distances(d, seed):
    net = through_the_box(mlp((d,), 3, (8, 8)), seed).float().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(10, d, generator=gen)
    with torch.no_grad():
        y = net(x).argmax(1)  # every point correctly classified: an ATTACKED status must be earned
    eps = {"l1": 0.08, "l2": 0.06, "linf": 0.05}
    records = certify_batch(net, list(range(10)), x, y, eps, CascadeOptions(attack="fast", mip_time_limit=20),
                            defaultdict(float))
    statuses, truly_robust = defaultdict(int), defaultdict(list)
    for r in records:
        xi, yi = x[r.index : r.index + 1], int(y[r.index])
        if r.norm == "l2":
            if d != 2:
                continue
            exact, slack = _grid_l2_distance(net, xi, yi)
            lower = exact - slack
        else:
            exact, lower = exact_distance(net, xi, yi, 1.0 if r.norm == "l1" else INF)
            slack = MIP_SLACK
        assert r.correct
        assert r.certified_radius <= exact + slack, (r, exact)
        if r.adversarial_norm is not None:
            assert r.adversarial_norm >= lower - slack, (r, lower)
        if r.status == CERTIFIED:
            assert lower > r.eps - slack, (r, lower)
        if r.status == ATTACKED:
            assert exact <= r.eps + slack and r.attacked_by in ("region", "pgd", "mip"), (r, exact)
        statuses[r.status] += 1
        truly_robust[r.norm].append(lower > r.eps + slack if r.status != ATTACKED else exact > r.eps + slack)
    assert statuses[CERTIFIED] and statuses[ATTACKED]  # the test saw both outcomes, both earned
    row = summarize(records, eps, test_error=0.0)
    for norm, robust in truly_robust.items():  # in counts: LB n <= non-robust points <= UB n
        non_robust = len(robust) - sum(robust)
        assert row[norm]["attacked"] <= non_robust <= row[norm]["n"] - row[norm]["certified"], (norm, row[norm])


def test_region_certificates_never_exceed_exact_distance_and_exact_case_is_optimal():
    net = through_the_box(mlp((2,), 3, (6,)), 7).float().eval()
    x = torch.rand(30, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = {"linf": 0.05}
    records = certify_batch(net, list(range(30)), x, y, eps, CascadeOptions(bounds=(), attack="none", mip=False),
                            defaultdict(float))
    by_region = [r for r in records if r.attacked_by == "region"]
    for r in records:
        exact, lower = exact_distance(net, x[r.index : r.index + 1], int(y[r.index]), INF)
        assert r.region_radius <= exact + MIP_SLACK
        if r.attacked_by == "region":  # Theorem 2.1's exact case: the projection is optimal
            assert r.adversarial_norm == pytest.approx(exact, rel=1e-3, abs=1e-6)
            assert r.adversarial_norm >= lower - MIP_SLACK
    assert by_region, "the exact case of Theorem 2.1 did not occur in this setup"
