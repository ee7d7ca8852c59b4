"""Certified radii: per point and norm, the largest radius each method proves.

After the cascade has decided a batch at the run's eps, this stage looks for larger certified
radii, as far as the robustness curves need them (up to ``CURVE_EXTENT`` eps_p) and no further:
  * region: Theorem 2.1's radius (eq 3), exact, already computed by the cascade;
  * bound propagation (KW, CROWN, ...): the largest eps the method certifies, by a batched
    bisection on a per-point eps (``LpBall`` takes a [B] tensor of radii). The bracket of each
    point is [floor, ceiling]: floor = the best radius proven so far by any method (region,
    eps where a method certified it, an earlier method's bisection); ceiling = the smallest
    checked counterexample's norm (a closed ball holding one cannot be certified), capped
    at CURVE_EXTENT eps_p, which is tried first. Bisection stops when the bracket is at most
    ``REL_PRECISION`` max(ceiling, eps_p) wide; the radius kept is the largest eps the method
    actually certified (``mmru.verify.certify``, rounding tolerance included), so it is a
    proven radius by construction, below the method's best by at most that width (the
    method's certificates being monotone in eps, as KW's are);
  * MIP (the norms of ``mip_norms``): the minimal adversarial distance, searched within the ball
    of radius min(ceiling, CURVE_EXTENT eps_p) (bounds over that ball,
    ``mip_min_distance(max_radius=)``), when the solver (HiGHS for l_1 and l_∞, SCIP for l_2)
    finishes within the time limit. Its lower bound is taken over
    f_y - f_s <= +tol, tol = max(MARGIN_TOL, rounding tolerance of the bounds): the policy of
    ``mip_verify`` for near-ties. The solver meets the norm's rows up to its primal feasibility
    tolerance each, so the bound is lowered by ``mip_distance_slack`` and rounded down; a
    search that finds nothing closer proves its cap (less that slack). The checked point it
    finds (``check_adversarial``) lowers the adversarial norm. One ``RadiusJob`` per point,
    picklable, solved by ``mip_radius(net64, job)``: a worker pool can map the list.
Every radius proven at or above eps_p also certifies the point at eps_p (its ball contains the
eps_p ball), and every counterexample found attacks it at its norm: the cascade's status
follows, so the curves at eps_p agree with the summary. Cost: on the demo model the stage takes
about 7x the cascade's time without the MIP (README), hence ``radii=false`` by default.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from mmru.attacks import adversarial_norm, check_adversarial
from mmru.certification.mip_pool import MIPPool
from mmru.models import ReLUNet
from mmru.verify import certify as bound_certify
from mmru.verify.bounds import hidden_bounds, input_ball, rounding_tolerance
from mmru.verify.milp import OPTIONS as MILP_OPTIONS
from mmru.verify.mip import DISTANCE_TOL, MARGIN_TOL, mip_min_distance
from mmru.verify.scip_program import FEASTOL as SCIP_FEASTOL

INF = math.inf

#: radii are searched up to this multiple of eps_p: the robustness curves' extent
CURVE_EXTENT = 2.0

#: bisection stops when the bracket is at most this fraction of max(its upper end, eps_p): finer
#: than the curves' grid (2.5% of their extent), and each halving costs a bound pass on the batch
REL_PRECISION = 1e-2


@dataclass(frozen=True)
class RadiusJob:
    """One point's MIP distance search; picklable, so a list of them can go to a worker pool."""

    x: torch.Tensor  #: [1, *input_shape] float64, on the CPU
    y: int
    p: float  #: 1, 2 or inf
    max_radius: float  #: search cap: the result is a radius <= this
    time_limit: float


@dataclass
class RadiusOutcome:
    """``radius``: proven, r_p(x) >= radius on the closed ball (None: the solver did not finish);
    ``counterexample``: a point that passed ``check_adversarial`` (None: none found)."""

    radius: float | None
    counterexample: torch.Tensor | None
    seconds: float


def mip_distance_slack(input_dim: int, p: float) -> float:
    """What the solver's distance may fall short by: the norm's rows (d for l_1, one per
    coordinate each for l_∞) may each be violated by the primal feasibility tolerance; for l_2
    the one quadratic row ||x' - x||_2^2 <= s by SCIP's absolute tolerance, which moves the
    distance by at most its square root. Never less than ``DISTANCE_TOL``, the precision
    ``mip_min_distance`` calls exact."""
    if p == 2.0:
        return max(DISTANCE_TOL, math.sqrt(SCIP_FEASTOL))
    rows = input_dim + 1 if p == 1.0 else 1
    return max(DISTANCE_TOL, rows * MILP_OPTIONS["primal_feasibility_tolerance"])


def mip_radius(net64: ReLUNet, job: RadiusJob) -> RadiusOutcome:
    """The MIP's certified radius for one point (``net64``: float64, on the CPU)."""
    start = time.perf_counter()
    with torch.no_grad():
        ball = input_ball(job.x, job.max_radius, job.p)
        passes = hidden_bounds(net64, ball, "crown")
        tol = max(MARGIN_TOL, float(rounding_tolerance(net64, ball, passes)[0]))
    md = mip_min_distance(net64, job.x, job.y, job.p, job.time_limit, bounds=passes["crown"],
                          max_radius=job.max_radius, margin_tol=tol)
    radius = None
    if not md.timed_out:  # every target's MILP ran: md.lower bounds min(r_p, max_radius)
        shrunk = md.lower - mip_distance_slack(job.x[0].numel(), job.p)
        radius = max(0.0, math.nextafter(shrunk, 0.0))
    point = None
    if md.point is not None:
        cand = md.point.reshape(job.x.shape)
        if bool(check_adversarial(net64, job.x, cand, torch.tensor([job.y]), md.distance, job.p)[0]):
            point = cand
    return RadiusOutcome(radius, point, time.perf_counter() - start)


def bisect_radius(
    net64: ReLUNet, x: torch.Tensor, y: torch.Tensor, p: float, method: str, floor: torch.Tensor,
    ceiling: torch.Tensor, cap: float, scale: float, rel: float = REL_PRECISION,
) -> torch.Tensor:
    """[B] the largest eps in (floor, ceiling] that ``method`` certified (0: none it tried).

    floor, ceiling: [B] float64 on the CPU, ceiling <= cap; where ceiling == cap (no
    counterexample below it) the cap is tried first. ``scale``: eps_p, the absolute precision
    floor (radii far below eps_p matter to no curve point but 0). Points with floor >= ceiling
    are not tried.
    """
    lo, hi = floor.clone(), ceiling.clone()
    best = torch.zeros_like(lo)
    todo = lo < hi
    at_cap = todo & (hi >= cap)
    if at_cap.any():
        ok = _certified(net64, x, y, p, method, hi, at_cap)
        best[ok] = hi[ok]
        todo &= ~ok  # robust as far as the curves go
    while True:
        todo &= (hi - lo) > rel * torch.clamp(hi, min=scale)
        if not todo.any():
            return best
        mid = (lo + hi) / 2
        ok = _certified(net64, x, y, p, method, mid, todo)
        lo, best = torch.where(ok, mid, lo), torch.where(ok, mid, best)
        hi = torch.where(todo & ~ok, mid, hi)


def _certified(net64, x, y, p, method, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] bool: ``method`` certifies the points in ``mask``, each at its own eps."""
    idx = mask.nonzero().flatten()
    on = idx.to(x.device)
    out = torch.zeros_like(mask)
    out[idx] = bound_certify(net64, x[on].double(), y[on], eps[idx].to(x.device), p, method).cpu()
    return out


def norm_radii(net64: ReLUNet, mip_net: ReLUNet, x: torch.Tensor, y: torch.Tensor, p: float, eps: float,
               correct: torch.Tensor, region: torch.Tensor, st, options, timings: dict[str, float],
               pool: MIPPool | None = None) -> list[dict]:
    """Per point, {method: largest radius it proved} for one norm; updates the cascade's state
    ``st`` (certified radius and method, proven at eps, smallest counterexample).

    ``mip_net``: ``net64`` on the CPU, for the MIP (run when ``options.mip_covers(p)``, with
    ``options.mip_time_limit`` per point, in ``pool``'s workers; in this process when None).
    """
    n, cap = len(correct), CURVE_EXTENT * eps
    radii = [{"region": float(region[i])} if correct[i] else {} for i in range(n)]
    for i in range(n):  # certificates the cascade proved at eps itself
        if correct[i] and st.radius_by[i] not in (None, "region") and st.radius[i] >= eps:
            radii[i][st.radius_by[i]] = float(st.radius[i])
    for method in options.bounds:
        start = time.perf_counter()
        ceiling = torch.clamp(st.adv_norm, max=cap)
        found = bisect_radius(net64, x, y, p, method, st.radius.clone(), ceiling, cap, eps) * correct
        _prove(st, found, method, eps, radii)
        _spend(st, timings, "radii", time.perf_counter() - start, correct)
    if options.mip_covers(p):
        ceiling = torch.clamp(st.adv_norm, max=cap)
        # only where the bracket is still wider than the bisection's precision
        todo = correct & (ceiling - st.radius > REL_PRECISION * torch.clamp(ceiling, min=eps))
        idx = todo.nonzero().flatten().tolist()
        xc = x.detach().cpu().double()
        jobs = [RadiusJob(xc[i : i + 1], int(y[i]), p, float(ceiling[i]), options.mip_time_limit) for i in idx]
        start = time.perf_counter()
        found = torch.zeros(n, dtype=torch.float64)
        for i, outcome in zip(idx, (pool or MIPPool(1)).map(mip_radius, mip_net, jobs)):
            st.seconds[i] += outcome.seconds
            if outcome.radius is not None:
                found[i] = outcome.radius
            if outcome.counterexample is not None:
                norms = torch.full((n,), INF, dtype=torch.float64)
                norms[i] = float(adversarial_norm(xc[i : i + 1], outcome.counterexample, p)[0])
                st.attacked(norms < INF, norms, "mip")
        _prove(st, found, "mip", eps, radii)
        timings["radii_mip"] += time.perf_counter() - start
    _check_sound(st, correct)
    return radii


def _prove(st, found: torch.Tensor, method: str, eps: float, radii: list[dict]) -> None:
    """Record the radii ``method`` proved on closed balls; those >= eps certify at eps."""
    proved = found > 0
    for i in proved.nonzero().flatten().tolist():
        radii[i][method] = max(radii[i].get(method, 0.0), float(found[i]))
    st.certify(proved & (found >= eps), found, method, closed_ball=True)
    st.certify(proved & (found < eps), found, method)


def _spend(st, timings: dict[str, float], name: str, seconds: float, among: torch.Tensor) -> None:
    """A batched stage's wall time, split evenly among the points it served."""
    timings[name] += seconds
    if among.any():
        st.seconds[among] += seconds / int(among.sum())


def _check_sound(st, correct: torch.Tensor) -> None:
    """A certified radius above a checked counterexample's norm is a soundness bug: stop."""
    bad = correct & (st.radius > st.adv_norm)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise RuntimeError(f"certified radius {float(st.radius[i])} ({st.radius_by[i]}) exceeds a checked "
                           f"counterexample's norm {float(st.adv_norm[i])} ({st.adv_by[i]}): a certificate is unsound")
