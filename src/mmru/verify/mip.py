"""Exact verification of a ReLUNet by mixed-integer linear programming (Tjeng et al., the paper's [31]).

The network of eq (1) is encoded exactly (``milp``), with big-M constants from bound
propagation over the same input set; stable units need no binary. The input set is linear
for p = inf (a box) and p = 1 (auxiliary t >= |x' - x|, sum t <= eps), both intersected
with the pixel box. HiGHS solves the MILPs.

``mip_verify`` decides robustness at one radius, one target class s at a time (likeliest
first), minimising the margin f_y - f_s over the points of the set where it is <= +tol,
tol = max(margin_tol, the rounding tolerance of the bounds):
  * "robust" only when, for every s, the CROWN margin bound exceeds tol or HiGHS proves that
    MILP infeasible. The positive tol absorbs the solver's feasibility tolerances and the
    rounding of the big-M bounds, so neither can hide a tie or a misclassification;
  * "attacked" only with a point that passes ``mmru.attacks.check_adversarial`` (the
    project's one definition of a counterexample) after ``snap_to_ball`` pulled it strictly
    inside the ball: HiGHS returns vertices on the ball's surface;
  * anything else leaves the point undecided ("timeout", "unknown").
How the search runs only decides how often it concludes, never what a conclusion means:
HiGHS stops at the first incumbent with margin < -margin_tol (``objective_target``), a
point misclassified by a safe amount, so a near-tie incumbent (margin in [-margin_tol, tol],
common at vertices of the MILP) does not end the search; should a point reaching the target
still fail the re-check, the search resumes without a target, to the minimiser of the
margin (optimality proven) or the time limit.
``mip_min_distance`` computes the exact minimal adversarial l_inf / l_1 distance (ground truth
for tests of the other certificates), with a point that passes the same check.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import highspy
import numpy as np
import torch

from mmru.models import ReLUNet
from mmru.verify.bounds import Bounds
from mmru.verify.milp import Program, abs_deviation, encode_relu_net, margin_row
from mmru.verify.problem import (
    _check_p,
    _checked_counterexample,
    _pushed_counterexample,
    big_m_bounds,
    decision_problem,
    distance_problem,
    linear_input_program,
)

INF = math.inf
Status = highspy.HighsModelStatus

#: default tolerance of ``mip_verify`` on the margin f_y - f_s (see the module docstring)
MARGIN_TOL = 1e-6

#: ``mip_min_distance`` calls the distance exact ("optimal") when its checked point is at
#: most this much farther from x than the proven lower bound
DISTANCE_TOL = 1e-6

#: the margin by which ``mip_min_distance``'s fallback MILP asks for a strict misclassification
STRICT_MARGIN = 1e-7


@dataclass
class MIPResult:
    """Outcome of ``mip_verify`` for one point.

    status: "robust" (no target reachable), "attacked" (``counterexample`` passes
    ``check_adversarial`` at this radius), "timeout" (time ran out on some target), or
    "unknown" (undecided otherwise: the solver's best point failed the float64 re-check,
    or it stopped for another reason). Only "robust" certifies, only "attacked" counts
    toward the lower bound.
    objective_bound: a proven lower bound on min over the set and s != y of f_y - f_s
    (capped at the tolerance where a target was ruled out).
    """

    status: str
    counterexample: torch.Tensor | None
    seconds: float
    objective_bound: float
    target: int | None = None


@dataclass
class MinDistance:
    """Minimal l_p distance from x to a point classified as some s != y (within the box).

    ``point`` passes ``check_adversarial`` at radius ``distance`` (None, distance inf: no
    checked point was found); ``lower`` is the solver's proven lower bound on the minimal
    distance. ``optimal``: every MILP was solved to optimality and distance <= lower +
    DISTANCE_TOL, so the minimal distance lies in [lower, distance], known to DISTANCE_TOL.
    ``timed_out``: the time limit stopped some MILP (``optimal`` is then False).
    """

    distance: float
    lower: float
    point: torch.Tensor | None
    target: int | None
    optimal: bool
    seconds: float
    timed_out: bool = False


def mip_verify(
    net: ReLUNet,
    x: torch.Tensor,
    y: int,
    eps: float,
    p: float,
    time_limit: float = 120.0,
    bounds: list[Bounds] | None = None,
    box: tuple[float, float] | None = (0.0, 1.0),
    margin_tol: float = MARGIN_TOL,
    tighten_bounds: bool = True,
    solver: str = "highs",
) -> MIPResult:
    """Decide whether f classifies every x' in the l_p ball (p in {1, 2, inf}) of radius eps as y.

    ``solver``: "highs" or "scip" for p = 1 and inf. p = 2 (a quadratic constraint) and
    solver="scip" go to ``miqp.scip_verify``, under the same rules and on the same program.

    ``bounds``: pre-activation bounds of the hidden layers (e.g. ``layer_bounds(...)``, logits
    entry ignored) valid over this ball for this single point; CROWN in float64 when None.
    "robust" means that no x' with f_y - f_s <= +tol exists, tol = max(margin_tol, the
    rounding tolerance of the bounds); targets whose CROWN margin bound already exceeds tol
    are skipped (the same criterion, proven without a solver).
    ``tighten_bounds`` (p = 1, inf): first tighten the big-M constants of the unstable units of layers
    2.. by safe LP bounds (``lp_tightening``), within the same time limit.
    """
    if not (eps >= 0 and time_limit > 0 and margin_tol > 0):
        raise ValueError(f"need eps >= 0, time_limit > 0, margin_tol > 0; got {eps}, {time_limit}, {margin_tol}")
    if solver not in ("highs", "scip"):
        raise ValueError(f"solver must be 'highs' or 'scip', got {solver!r}")
    if _check_p(p) == 2.0 or solver == "scip":
        from mmru.verify.miqp import scip_verify  # imports this module

        return scip_verify(net, x, y, eps, p, time_limit, bounds, box, margin_tol, tighten_bounds)
    start = time.perf_counter()
    problem = decision_problem(net, x, y, eps, p, bounds, box, margin_tol)
    if problem.misclassified:
        return MIPResult("attacked", problem.x64[0], time.perf_counter() - start, -INF, None)
    net64, x64, tol, bound = problem.net64, problem.x64, problem.tol, problem.margin_bound
    p = _check_p(p)
    input_program = linear_input_program(problem.x64, problem.ball, eps, p)
    hidden = big_m_bounds(problem, input_program, tighten_bounds, start + time_limit)
    prog, x_cols = input_program()
    encoded = encode_relu_net(prog, net64, x_cols, hidden)

    undecided = set()  # why targets stayed open: "timeout" or "unknown"
    for s in problem.targets:
        cols, coef, const = margin_row(net64, encoded, y, s)
        cut = (cols, coef, -INF, tol - const)  # f_y - f_s <= +tol
        why = "unknown"  # a target stays open unless HiGHS proves its MILP infeasible
        # stop at a margin < -margin_tol; only if that point fails the re-check, minimise fully
        for goal in (-margin_tol, -INF):
            remaining = time_limit - (time.perf_counter() - start)
            if remaining <= 0:
                why = "timeout"
                break
            h = prog.solve(dict(zip(cols, coef)), [cut], remaining, {"objective_target": goal - const})
            status, info = h.getModelStatus(), h.getInfo()
            if status == Status.kInfeasible:
                bound[s], why = max(bound[s], tol), None
                break
            if info.mip_dual_bound > -INF:  # bounds the margin where it is <= +tol
                bound[s] = max(bound[s], min(info.mip_dual_bound + const, tol))
            if info.primal_solution_status == 2:  # the solver has a point
                point = np.array(h.getSolution().col_value)[x_cols]
                x_adv = _checked_counterexample(net64, x64, point, y, eps, p)
                if x_adv is not None:
                    seconds = time.perf_counter() - start
                    return MIPResult("attacked", x_adv.reshape(net.input_shape), seconds, min(bound.values()), s)
            if status != Status.kObjectiveTarget:  # optimal, out of time, or stopped otherwise
                why = "timeout" if status == Status.kTimeLimit else "unknown"
                break
        if why is not None:
            undecided.add(why)
    outcome = "timeout" if "timeout" in undecided else "unknown" if undecided else "robust"
    return MIPResult(outcome, None, time.perf_counter() - start, min(bound.values()))


def _proven_minimum(h: highspy._Highs, prog: Program) -> float:
    """A lower bound on the program's minimum HiGHS proved: its MIP dual bound, or, for a
    program without binaries (every unit stable: HiGHS solves an LP and leaves the MIP dual
    bound at 0), the LP's optimum once proven optimal; else -inf."""
    if prog.binary:
        return h.getInfo().mip_dual_bound
    return h.getInfo().objective_function_value if h.getModelStatus() == Status.kOptimal else -INF


def mip_min_distance(
    net: ReLUNet,
    x: torch.Tensor,
    y: int,
    p: float,
    time_limit: float = 60.0,
    bounds: list[Bounds] | None = None,
    max_radius: float | None = None,
    margin_tol: float = 0.0,
) -> MinDistance:
    """min ||x' - x||_p over x' in [0, 1]^d with f_s(x') >= f_y(x') for some s != y (p in {1, 2, inf};
    p = 2: ``miqp.miqp_min_distance``).

    One MILP per target class; the best checked distance so far caps the next ones. The
    MILP's minimiser lies on the decision boundary (a tie): the point returned is pushed
    just past it along the ray from x, by the least of ``problem._PUSHES`` that makes it strictly
    misclassified. ``bounds`` must hold over the whole box (CROWN over the l_inf ball of
    radius 1, which covers it, if None).
    ``max_radius``: search only ||x' - x||_p <= max_radius (``bounds``, CROWN over that ball
    if None, need hold there only): ``lower`` is then a bound on min(r_p(x), max_radius).
    ``margin_tol``: the lower bound is taken over f_y - f_s <= +margin_tol, a superset of the
    boundary that absorbs the solver's tolerances and the bounds' rounding (as ``mip_verify``).
    """
    if not time_limit > 0:
        raise ValueError(f"time_limit must be > 0, got {time_limit}")
    if _check_p(p) == 2.0:
        from mmru.verify.miqp import miqp_min_distance  # imports this module

        return miqp_min_distance(net, x, y, time_limit, bounds, max_radius, margin_tol)
    start = time.perf_counter()
    p = _check_p(p)
    net64, x64, ball, hidden = distance_problem(net, x, y, p, bounds, max_radius)
    if ball is None:
        return MinDistance(0.0, 0.0, x64[0], None, True, time.perf_counter() - start)
    xf = x64.reshape(-1).numpy()
    lo, hi = (t[0].numpy() for t in ball.cube())

    prog = Program()
    x_cols = prog.add_cols(lo, hi)
    if p == 1.0:
        dev = abs_deviation(prog, xf, x_cols, lo, hi)
        objective = {int(j): 1.0 for j in dev}
        if max_radius is not None:
            prog.add_row(dev, np.ones(len(dev)), -INF, max_radius)
    else:
        r = prog.add_cols(0.0, 1.0 if max_radius is None else max_radius)[0]
        for i in range(len(xf)):  # r >= |x'_i - x_i|
            prog.add_row([x_cols[i], r], [1.0, -1.0], -INF, xf[i])
            prog.add_row([x_cols[i], r], [-1.0, -1.0], -INF, -xf[i])
        objective = {int(r): 1.0}
    encoded = encode_relu_net(prog, net64, x_cols, hidden)

    best, best_point, best_target, lower, solved, timed_out = INF, None, None, INF, True, False
    options = {"mip_rel_gap": 1e-7, "mip_abs_gap": 1e-10}
    for s in (s for s in range(net.num_classes) if s != y):
        cols, coef, const = margin_row(net64, encoded, y, s)
        # The boundary f_y - f_s <= 0 first: its optimum bounds the distance from below. Its
        # minimiser is a tie; if no push along the ray makes it a counterexample (the margin
        # only touches 0 there), the closest point misclassified by STRICT_MARGIN instead.
        for level in (margin_tol, -STRICT_MARGIN):
            remaining = time_limit - (time.perf_counter() - start)
            if remaining <= 0:
                solved, timed_out = False, True
                break
            rows = [(cols, coef, -INF, level - const)]
            if best < INF:  # only a closer point can matter
                norm_cols = list(objective)
                rows.append((np.array(norm_cols), np.ones(len(norm_cols)), -INF, best))
            h = prog.solve(objective, rows, remaining, options)
            status = h.getModelStatus()
            if status == Status.kInfeasible:
                break  # unreachable, or not closer than the best so far
            info = h.getInfo()
            if level == margin_tol:
                lower = min(lower, _proven_minimum(h, prog))
            solved &= status == Status.kOptimal
            timed_out |= status == Status.kTimeLimit
            if info.primal_solution_status != 2:
                break
            found = _pushed_counterexample(net64, x64, np.array(h.getSolution().col_value)[x_cols], y, p)
            if found is not None:
                if found[1] < best:
                    (best_point, best), best_target = found, s
                break
    lower = min(lower, best, INF if max_radius is None else max_radius)
    point = None if best_point is None else best_point.reshape(net.input_shape)
    optimal = solved and best <= lower + DISTANCE_TOL
    return MinDistance(best, lower, point, best_target, optimal, time.perf_counter() - start, timed_out)
