"""Robustness and Theorem 4.1 curves: values on hand-built records, and agreement with the
summary's LB / UB at the certified radius (hand-built records and a small cascade run)."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.curves import robustness_curves, universal_curve
from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED, PointRecord, summarize
from mmru.models import mlp
from tiny_nets import through_the_box

pytestmark = pytest.mark.usefixtures("one_thread")


def _record(index, status, certified_radius=0.0, by=None, adv=None, norm="l2", eps=0.2, region=0.0, correct=True):
    return PointRecord(index=index, norm=norm, eps=eps, label=0, correct=correct, status=status,
                       region_radius=region, certified_radius=certified_radius, certified_by=by,
                       adversarial_norm=adv, attacked_by=None if adv is None else "pgd", seconds=0.0)


# eps = 0.2; the grid of 5 points is 0, 0.1, 0.2, 0.3, 0.4
HAND = [
    _record(0, CERTIFIED, 0.35, "region", region=0.35),  # region: robust up to 0.35
    _record(1, CERTIFIED, 0.2, "kw", region=0.05),  # closed ball of radius eps: robust up to 0.2
    _record(2, CERTIFIED, 0.2, "mip", adv=0.3),  # the MIP at eps, and a counterexample beyond it
    _record(3, ATTACKED, 0.05, "region", adv=0.15, region=0.05),
    _record(4, UNDECIDED, 0.08, "region", region=0.08),
    _record(5, ATTACKED, adv=0.0, correct=False),  # misclassified
]


def test_robustness_curves_on_hand_built_records():
    curve = robustness_curves(HAND, {"l2": 0.2}, points=5)["l2"]
    assert curve["eps"] == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4] and curve["eps"][2] == 0.2
    # robust at r: 0 -> points 0-4 (radii > 0); 0.1 -> 0, 1, 2; 0.2 -> 0, 1, 2; 0.3 -> 0; 0.4 -> none
    assert curve["certified"] == [1 / 6, 3 / 6, 3 / 6, 5 / 6, 1.0]
    # broken at r: point 5 at 0; + point 3 from 0.15; + point 2 from 0.3
    assert curve["empirical"] == [1 / 6, 1 / 6, 2 / 6, 3 / 6, 3 / 6]


def test_curves_agree_with_the_summary_at_eps():
    summary = summarize(HAND, {"l2": 0.2}, test_error=None)["l2"]
    for points in (5, 41):
        curve = robustness_curves(HAND, {"l2": 0.2}, points=points)["l2"]
        at = curve["eps"].index(0.2)
        assert curve["certified"][at] == summary["ub"] == 0.5
        assert curve["empirical"][at] == summary["lb"] == 2 / 6


@pytest.mark.parametrize("radii", [False, True])
def test_curves_agree_with_the_summary_after_a_cascade_run(radii):
    """Through the real cascade: bound-propagation certificates are recorded at eps itself
    (``radii=False``) or as the largest radius each method proves."""
    torch.manual_seed(0)
    net = through_the_box(mlp((6,), 3, (10, 10)), 3)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(24, 6, generator=gen)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:2] = (y[:2] + 1) % 3  # two misclassified points
    eps = {"l1": 0.3, "l2": 0.15, "linf": 0.06}
    options = CascadeOptions(bounds=("kw", "crown"), attack="fast", mip=False, radii=radii)
    records = certify_batch(net, list(range(24)), x, y, eps, options, defaultdict(float))
    assert any(r.certified_by in ("kw", "crown") for r in records)  # closed-ball certificates occur
    assert any(r.certified_radius > r.eps for r in records if r.certified_by in ("kw", "crown")) == radii
    summary = summarize(records, eps, test_error=None)
    curves = robustness_curves(records, eps)
    for norm, radius in eps.items():
        at = curves[norm]["eps"].index(radius)
        assert curves[norm]["certified"][at] == summary[norm]["ub"], norm
        assert curves[norm]["empirical"][at] == summary[norm]["lb"], norm
    at = curves["union"]["eps"].index(1.0)  # the union's scale t = 1: every norm at its eps
    assert curves["union"]["certified"][at] == summary["union_ub"]
    assert curves["union"]["empirical"][at] == summary["union_lb"]


def test_robustness_curves_need_eps_on_the_grid():
    with pytest.raises(ValueError, match="odd"):
        robustness_curves(HAND, {"l2": 0.2}, points=40)


def _hull_l2(rho_1: float, rho_inf: float) -> float:
    """Eq (7) for p = q = 2 with rho_1 / rho_inf in (1, d): rho_1 / sqrt(k + alpha^2)."""
    k = math.floor(rho_1 / rho_inf)
    return rho_1 / math.sqrt(k + (rho_1 / rho_inf - k) ** 2)


def test_universal_curve_on_hand_built_records():
    d = 10
    l1 = [_record(0, UNDECIDED, norm="l1", region=0.3), _record(1, UNDECIDED, norm="l1", region=0.26),
          _record(2, ATTACKED, norm="l1", adv=0.0, correct=False)]
    linf = [_record(0, UNDECIDED, norm="linf", region=0.11), _record(1, UNDECIDED, norm="linf", region=0.12),
            _record(2, ATTACKED, norm="linf", adv=0.0, correct=False)]
    curve = universal_curve(l1 + linf, d, points=4)
    assert curve["eps"] == pytest.approx([0.0, 0.1, 0.2, 0.3], rel=1e-15) and curve["eps"][-1] == 0.3
    l2 = sorted([_hull_l2(0.3, 0.11), _hull_l2(0.26, 0.12)])  # 0.1826, 0.1886
    assert curve["median_radius"]["2"] == pytest.approx(l2[0], rel=1e-12)
    assert curve["median_radius"]["2"] < l2[0]  # rounded down
    assert curve["median_radius"]["1"] == 0.26 and curve["median_radius"]["inf"] == 0.11
    # error at r: the points whose radius is <= r (the misclassified one always)
    assert curve["error"]["1"] == [1 / 3, 1 / 3, 1 / 3, 1.0]
    assert curve["error"]["2"] == [1 / 3, 1 / 3, 1.0, 1.0]
    assert curve["error"]["inf"] == [1 / 3, 1 / 3, 1.0, 1.0]
    assert universal_curve(l1 + linf[:2], d) is None  # the norms must cover the same points
