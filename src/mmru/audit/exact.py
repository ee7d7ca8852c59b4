"""Certified radii and counterexample norms against the exact minimal adversarial distance.

For p in {1, ∞} :func:`mmru.verify.mip_min_distance` computes r_p(x) of eq (4) (within the
[0, 1] box) by MIP; the cost grows exponentially with the number of unstable ReLUs, so this
runs only on nets with at most ``max_units`` hidden units. Only answers the solver reports
optimal are used. Two claims are checked against it:

- a certified radius r (for a certified point at least eps) is a lower bound on r_p(x): the
  MIP's minimiser must not lie inside the ball of radius r. It is a violation only if that
  point, or the same direction pushed out by a relative 1e-3 at most, passes
  :func:`mmru.attacks.check_adversarial` at radius r, so solver tolerances cannot raise a
  false alarm;
- a recorded counterexample norm is an upper bound on r_p(x): it must not lie below the
  solver's proven lower bound (up to a relative ``SOLVER_SLACK`` for its tolerances).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from mmru.attacks import adversarial_norm, check_adversarial
from mmru.audit.consistency import violation
from mmru.certification.records import CERTIFIED, PointRecord
from mmru.models import ReLUNet
from mmru.verify import mip_min_distance

#: nets with more hidden units are not compared (the MIP would not finish)
MAX_UNITS = 300
TIME_LIMIT = 60.0
#: relative tolerance of the MIP's proven lower bound (HiGHS feasibility and gap tolerances)
SOLVER_SLACK = 1e-6
#: how far the MIP minimiser is pushed along its direction to turn a solver near-tie into a
#: strict misclassification
_PUSH = (0.0, 1e-9, 1e-7, 1e-5, 1e-3)

EXACT_NORMS = {"l1": 1.0, "linf": math.inf}


@dataclass
class ExactReport:
    """MIP comparisons of one norm."""

    compared: int = 0
    not_optimal: list[int] = field(default_factory=list)  #: indices skipped: the solver did not prove optimality
    seconds: float = 0.0


def exact_check(net: ReLUNet, x: torch.Tensor, y: torch.Tensor, position: dict[int, int],
                records: list[PointRecord], p: float, time_limit: float = TIME_LIMIT) -> tuple[ExactReport, list[dict]]:
    """Compare ``records`` (one norm, correctly classified points of ``position``) with r_p(x)."""
    report, found = ExactReport(), []
    start = time.perf_counter()
    for r in records:
        radius = max(r.certified_radius, r.eps if r.status == CERTIFIED else 0.0)
        if not r.correct or (radius <= 0 and r.adversarial_norm is None):
            continue  # no claim to compare
        k = position[r.index]
        xi, yi = x[k : k + 1], int(y[k])
        exact = mip_min_distance(net, xi, yi, p, time_limit=time_limit)
        if not exact.optimal:
            report.not_optimal.append(r.index)
            continue
        report.compared += 1
        numbers = dict(eps=r.eps, certified_radius=r.certified_radius, adversarial_norm=r.adversarial_norm,
                       exact_distance=exact.distance, exact_lower=exact.lower)
        if radius > 0 and exact.point is not None:
            cx = _counterexample_within(net, xi, exact.point.reshape(xi.shape), y[k : k + 1], radius, p)
            if cx is not None:
                found.append(violation("radius_above_exact", r.index, r.norm,
                                       f"{r.status} with radius {radius} but a checked counterexample of norm "
                                       f"{float(adversarial_norm(xi, cx, p)[0])} exists (exact distance "
                                       f"{exact.distance})", **numbers))
        adv = r.adversarial_norm
        if adv is not None and adv < exact.lower * (1 - SOLVER_SLACK):
            found.append(violation("counterexample_below_exact", r.index, r.norm,
                                   f"recorded counterexample norm {adv} < proven exact distance {exact.lower}",
                                   **numbers))
    report.seconds = time.perf_counter() - start
    return report, found


def _counterexample_within(net, x, point, y, radius, p) -> torch.Tensor | None:
    """The MIP minimiser, pushed slightly outwards if needed, when it is a checked counterexample."""
    x64, delta = x.double(), point.double() - x.double()
    for push in _PUSH:
        cand = (x64 + (1 + push) * delta).clamp(0.0, 1.0)
        if bool(check_adversarial(net, x64, cand, y, radius, p)[0]):
            return cand
    return None
