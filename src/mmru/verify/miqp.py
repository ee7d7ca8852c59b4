"""Exact verification of a ReLUNet by SCIP: l_2 (the MIP of ``mip`` with a convex quadratic
constraint), and l_1 / l_inf when SCIP is chosen over HiGHS for them.

The network is encoded exactly as for HiGHS (``milp.encode_relu_net``, big-M constants from CROWN
over the ball ∩ box, LP-tightened on request for l_1 / l_inf); the input set is the ball's cube
∩ [0, 1] (column bounds), plus sum_i (x'_i - x_i)^2 <= eps^2 for l_2 or ``mip``'s linear rows
for l_1. SCIP solves it (``scip_program``). ``mip.mip_verify`` and ``mip.mip_min_distance``
dispatch here, and the decision rules are theirs (``mip``'s docstring):
  * "robust" only when, for every target s, CROWN's margin bound exceeds tol or SCIP proves
    {f_y - f_s <= +tol} infeasible, tol = max(margin_tol, the rounding tolerance of the bounds);
  * "attacked" only with a point that passes ``check_adversarial`` after ``snap_to_ball``;
  * anything else (time limit, a point failing the re-check, another stop) undecided.
SCIP stops at the first incumbent with margin <= -margin_tol (``limits/primal``), and should its
point fail the re-check, carries on (its search kept) to the optimum or the time limit.

``miqp_min_distance``: min ||x' - x||_2 through the epigraph column s >= ||x' - x||_2^2 (a linear
objective over a convex constraint). SCIP's dual bound on s bounds the squared distance from
below; its square root, rounded down, is the ``lower`` returned.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from mmru.models import ReLUNet
from mmru.verify.bounds import Bounds
from mmru.verify.milp import Program, encode_relu_net, margin_row
from mmru.verify.mip import DISTANCE_TOL, MARGIN_TOL, STRICT_MARGIN, MinDistance, MIPResult
from mmru.verify.problem import (
    _checked_counterexample,
    _pushed_counterexample,
    big_m_bounds,
    decision_problem,
    distance_problem,
    linear_input_program,
)
from mmru.verify.scip_program import ScipProgram

INF = math.inf
P = 2.0


def scip_verify(
    net: ReLUNet,
    x: torch.Tensor,
    y: int,
    eps: float,
    p: float = P,
    time_limit: float = 120.0,
    bounds: list[Bounds] | None = None,
    box: tuple[float, float] | None = (0.0, 1.0),
    margin_tol: float = MARGIN_TOL,
    tighten_bounds: bool = False,
) -> MIPResult:
    """``mip.mip_verify`` by SCIP: is every x' of the l_p ball of radius eps (in ``box``) classified
    as y? p in {1, 2, inf}; ``tighten_bounds`` (p = 1, inf) as ``mip.mip_verify``'s."""
    if not time_limit > 0:
        raise ValueError(f"need time_limit > 0, got {time_limit}")
    start = time.perf_counter()
    problem = decision_problem(net, x, y, eps, p, bounds, box, margin_tol)
    if problem.misclassified:
        return MIPResult("attacked", problem.x64[0], time.perf_counter() - start, -INF, None)
    p = float(p)
    net64, x64, tol, bound, targets = problem.net64, problem.x64, problem.tol, problem.margin_bound, problem.targets
    if not targets:
        return MIPResult("robust", None, time.perf_counter() - start, min(bound.values()))
    input_program = linear_input_program(problem.x64, problem.ball, eps, p)
    hidden = big_m_bounds(problem, input_program, tighten_bounds and p != P, start + time_limit)
    prog, x_cols = input_program()
    encoded = encode_relu_net(prog, net64, x_cols, hidden)
    scip = ScipProgram(prog)
    if p == P:
        scip.add_squared_distance(x_cols, x64.reshape(-1).numpy(), radius=float(eps))

    undecided = set()  # why targets stayed open: "timeout" or "unknown"
    for s in targets:
        cols, coef, const = margin_row(net64, encoded, y, s)
        cut = (cols, coef, -INF, tol - const)  # f_y - f_s <= +tol
        remaining = time_limit - (time.perf_counter() - start)
        if remaining <= 0:
            undecided.add("timeout")
            continue
        # stop at a margin <= -margin_tol; only if that point fails the re-check, minimise fully
        status = scip.solve(dict(zip(cols.tolist(), coef)), [cut], remaining, primal_limit=-margin_tol - const)
        while True:
            if status == "infeasible":
                bound[s], why = max(bound[s], tol), None
                break
            dual = scip.dual_bound()
            if dual > -INF:  # bounds the margin where it is <= +tol
                bound[s] = max(bound[s], min(dual + const, tol))
            point = scip.point(x_cols)
            if point is not None:
                x_adv = _checked_counterexample(net64, x64, point, y, eps, p)
                if x_adv is not None:
                    seconds = time.perf_counter() - start
                    return MIPResult("attacked", x_adv.reshape(net.input_shape), seconds, min(bound.values()), s)
            remaining = time_limit - (time.perf_counter() - start)
            if status != "primallimit" or remaining <= 0:  # optimal, out of time, or stopped otherwise
                why = "unknown" if status != "timelimit" and remaining > 0 else "timeout"
                break
            status = scip.resume(remaining)
        if why is not None:
            undecided.add(why)
    outcome = "timeout" if "timeout" in undecided else "unknown" if undecided else "robust"
    return MIPResult(outcome, None, time.perf_counter() - start, min(bound.values()))


def sqrt_down(squared: float) -> float:
    """A float <= sqrt(squared) for squared >= 0 (0 for squared <= 0): the square root rounded
    down, so that a lower bound on a squared distance gives one on the distance."""
    return 0.0 if not squared > 0 else max(0.0, math.nextafter(math.sqrt(squared), 0.0))


def miqp_min_distance(
    net: ReLUNet,
    x: torch.Tensor,
    y: int,
    time_limit: float = 60.0,
    bounds: list[Bounds] | None = None,
    max_radius: float | None = None,
    margin_tol: float = 0.0,
) -> MinDistance:
    """``mip.mip_min_distance`` for p = 2: min ||x' - x||_2 over x' in [0, 1]^d with
    f_s(x') >= f_y(x') for some s != y, within ||x' - x||_2 <= max_radius when given.

    ``lower``: the square root, rounded down, of SCIP's dual bound on the squared distance (the
    smallest over the targets), taken over f_y - f_s <= +margin_tol.
    """
    if not time_limit > 0:
        raise ValueError(f"time_limit must be > 0, got {time_limit}")
    start = time.perf_counter()
    net64, x64, ball, hidden = distance_problem(net, x, y, P, bounds, max_radius)
    if ball is None:
        return MinDistance(0.0, 0.0, x64[0], None, True, time.perf_counter() - start)
    xf = x64.reshape(-1).numpy()
    lo, hi = (t[0].numpy() for t in ball.cube())
    prog = Program()
    x_cols = prog.add_cols(lo, hi)
    encoded = encode_relu_net(prog, net64, x_cols, hidden)
    scip = ScipProgram(prog)
    # s >= ||x' - x||_2^2, at most the box's squared diameter or max_radius^2
    cap = float(np.sum(np.maximum(hi - xf, xf - lo) ** 2)) if max_radius is None else max_radius**2
    s_col = scip.add_col(0.0, cap)
    scip.add_squared_distance(x_cols, xf, epigraph=s_col)
    scip.model.setParam("limits/gap", 1e-7)
    scip.model.setParam("limits/absgap", 1e-12)

    best, best_point, best_target, lower_sq, solved, timed_out = INF, None, None, INF, True, False
    for s in (s for s in range(net.num_classes) if s != y):
        cols, coef, const = margin_row(net64, encoded, y, s)
        # the boundary f_y - f_s <= margin_tol first (its optimum bounds the distance from
        # below), then, if no push along the ray makes its tie a counterexample, the closest
        # point misclassified by STRICT_MARGIN (as mip.mip_min_distance)
        for level in (margin_tol, -STRICT_MARGIN):
            remaining = time_limit - (time.perf_counter() - start)
            if remaining <= 0:
                solved, timed_out = False, True
                break
            upper = {s_col: min(cap, best * best)}  # only a closer point can matter
            status = scip.solve({s_col: 1.0}, [(cols, coef, -INF, level - const)], remaining, upper=upper)
            if status == "infeasible":
                break  # unreachable, or not closer than the best so far
            if level == margin_tol:
                lower_sq = min(lower_sq, scip.dual_bound())
            solved &= status in ("optimal", "gaplimit")  # gaplimit: optimal within limits/gap
            timed_out |= status == "timelimit"
            point = scip.point(x_cols)
            if point is None:
                break
            found = _pushed_counterexample(net64, x64, point, y, P)
            if found is not None:
                if found[1] < best:
                    (best_point, best), best_target = found, s
                break
    lower = min(sqrt_down(lower_sq) if lower_sq < INF else INF, best, INF if max_radius is None else max_radius)
    point = None if best_point is None else best_point.reshape(net.input_shape)
    optimal = solved and best <= lower + DISTANCE_TOL
    return MinDistance(best, lower, point, best_target, optimal, time.perf_counter() - start, timed_out)
