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

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import highspy
import numpy as np
import torch

from mmru.attacks import check_adversarial, snap_to_ball
from mmru.attacks.geometry import CHECK_MARGIN
from mmru.models import ReLUNet
from mmru.verify.bounds import (
    Bounds,
    hidden_bounds,
    input_ball,
    margin_spec,
    output_bounds,
    rounding_tolerance,
)
from mmru.verify.ball import LpBall
from mmru.verify import lp_tightening
from mmru.verify.milp import Program, abs_deviation, encode_relu_net, margin_row

INF = math.inf
Status = highspy.HighsModelStatus

#: default tolerance of ``mip_verify`` on the margin f_y - f_s (see the module docstring)
MARGIN_TOL = 1e-6

#: ``mip_min_distance`` calls the distance exact ("optimal") when its checked point is at
#: most this much farther from x than the proven lower bound
DISTANCE_TOL = 1e-6

#: the margin by which ``mip_min_distance``'s fallback MILP asks for a strict misclassification
STRICT_MARGIN = 1e-7

#: relative pushes along the ray from x through the solver's boundary point, tried in turn
#: until the pushed point is strictly misclassified (``mip_min_distance``)
_PUSHES = (0.0, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6)


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


def _double(net: ReLUNet) -> ReLUNet:
    """The net in float64 on the CPU, where the MILP and the re-checks run (a copy if needed)."""
    w = next(net.parameters())
    on_cpu64 = w.dtype == torch.float64 and w.device.type == "cpu"
    return net if on_cpu64 else copy.deepcopy(net).to("cpu", torch.float64)


def _single(x: torch.Tensor, net: ReLUNet) -> torch.Tensor:
    return x.detach().reshape(1, *net.input_shape).to(torch.float64).cpu()


def _one_point_bounds(bounds: list[Bounds], num_hidden: int) -> list[Bounds]:
    """Hidden-layer bounds of one point as float64 [1, n_l] tensors."""
    def row(t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(1, -1).to(torch.float64).cpu()

    return [(row(lo), row(hi)) for lo, hi in bounds[:num_hidden]]


def _numpy_bounds(bounds: list[Bounds]) -> list[np.ndarray]:
    return [torch.cat([lo, hi]).numpy() for lo, hi in bounds]


def _check_p(p: float) -> float:
    p = float(p)
    if p not in (1.0, 2.0, INF):
        raise ValueError(f"the MIP handles p = 1, 2 and inf only, got {p}")
    return p


def _checked_counterexample(
    net64: ReLUNet, x64: torch.Tensor, point, y: int, eps: float, p: float
) -> torch.Tensor | None:
    """The solver's ``point`` pulled strictly inside the ball and the box (``snap_to_ball``),
    if it then passes ``check_adversarial`` at radius eps; else None. x64: [1, *input_shape]."""
    cand = torch.as_tensor(point, dtype=torch.float64).reshape(x64.shape)
    cand = snap_to_ball(x64, cand, eps, p)
    ok = check_adversarial(net64, x64, cand, torch.tensor([y]), eps, p)
    return cand[0] if bool(ok[0]) else None


@dataclass
class DecisionProblem:
    """What deciding robustness at one radius starts from, whichever solver decides it (HiGHS here,
    SCIP in ``miqp``): the point and net in float64 on the CPU, the ball, the hidden-layer bounds for
    the big-M constants, tol, CROWN's margin bound per target, and the targets left to a solver."""

    net64: ReLUNet
    x64: torch.Tensor
    misclassified: bool  #: x itself is a counterexample; nothing below is computed then
    ball: LpBall | None = None
    hidden: list[Bounds] | None = None
    tol: float = 0.0
    margin_bound: dict[int, float] | None = None  #: s -> a proven lower bound on min f_y - f_s
    targets: list[int] | None = None  #: the s whose bound is <= tol, likeliest first


def decision_problem(net: ReLUNet, x: torch.Tensor, y: int, eps: float, p: float, bounds: list[Bounds] | None,
                     box: tuple[float, float] | None, margin_tol: float) -> DecisionProblem:
    """The shared start of ``mip_verify`` and ``miqp.scip_verify`` (arguments as theirs): CROWN in
    float64 over the ball when ``bounds`` is None; tol = max(margin_tol, the bounds' rounding tolerance);
    targets whose CROWN margin bound exceeds tol are proven without a solver and left out."""
    if not (eps >= 0 and margin_tol > 0):
        raise ValueError(f"need eps >= 0 and margin_tol > 0; got {eps}, {margin_tol}")
    p, net64, x64 = _check_p(p), _double(net), _single(x, net)
    if bool(check_adversarial(net64, x64, x64, torch.tensor([y]), eps, p)[0]):
        return DecisionProblem(net64, x64, True)
    with torch.no_grad():
        ball = input_ball(x64, float(eps), p, box)
        if bounds is None:
            passes = hidden_bounds(net64, ball, "crown")
        else:
            passes = {"crown": _one_point_bounds(bounds, len(net.layers) - 1)}
        spec = margin_spec(torch.tensor([y]), net.num_classes, torch.float64)
        margin_lb = output_bounds(net64, spec, ball, passes)[0][0].numpy()
        tol = max(float(margin_tol), float(rounding_tolerance(net64, ball, passes)[0]))
    bound = {s: float(margin_lb[s]) for s in range(net.num_classes) if s != y}
    targets = sorted((s for s in bound if bound[s] <= tol), key=bound.get)
    return DecisionProblem(net64, x64, False, ball, passes["crown"], tol, bound, targets)


def linear_input_program(problem: DecisionProblem, eps: float, p: float) -> Callable[[], tuple[Program, np.ndarray]]:
    """A builder of the program's input part: the ball's cube ∩ box as column bounds and, for p = 1,
    the rows of sum_i |x'_i - x_i| <= eps (p = 2 adds its quadratic constraint in SCIP, ``miqp``)."""
    xf = problem.x64.reshape(-1).numpy()
    lo, hi = (t[0].numpy() for t in problem.ball.cube())

    def input_program() -> tuple[Program, np.ndarray]:
        prog = Program()
        x_cols = prog.add_cols(lo, hi)
        if p == 1.0:
            t = abs_deviation(prog, xf, x_cols, lo, hi)
            prog.add_row(t, np.ones(len(t)), -INF, eps)
        return prog, x_cols

    return input_program


def big_m_bounds(problem: DecisionProblem, input_program, tighten: bool, deadline: float) -> list[np.ndarray]:
    """The hidden layers' bounds for the big-M constants: CROWN's, first tightened by LP
    (``lp_tightening``, over ``input_program``'s set, until ``deadline``) when ``tighten`` and some
    target is left to a solver."""
    hidden = _numpy_bounds(problem.hidden)
    if problem.targets and tighten:
        hidden = lp_tightening.tighten(problem.net64, input_program, hidden, deadline)
    return hidden


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
    input_program = linear_input_program(problem, eps, p)
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


def _pushed_counterexample(net64: ReLUNet, x64: torch.Tensor, point: np.ndarray, y: int, p: float):
    """(point, radius) with the point on the ray from x through the solver's boundary point,
    pushed by the first of ``_PUSHES`` that makes it pass ``check_adversarial`` at radius =
    its norm (1 + 4 CHECK_MARGIN); None if no push does (the ray leaves the other class)."""
    delta = torch.from_numpy(point).reshape(x64.shape) - x64
    for push in _PUSHES:
        cand = (x64 + delta * (1.0 + push)).clamp(0.0, 1.0)
        radius = float(torch.linalg.vector_norm((cand - x64).flatten(), ord=p)) * (1.0 + 4 * CHECK_MARGIN)
        if bool(check_adversarial(net64, x64, cand, torch.tensor([y]), radius, p)[0]):
            return cand[0], radius
    return None


def _proven_minimum(h: highspy._Highs, prog: Program) -> float:
    """A lower bound on the program's minimum HiGHS proved: its MIP dual bound, or, for a
    program without binaries (every unit stable: HiGHS solves an LP and leaves the MIP dual
    bound at 0), the LP's optimum once proven optimal; else -inf."""
    if prog.binary:
        return h.getInfo().mip_dual_bound
    return h.getInfo().objective_function_value if h.getModelStatus() == Status.kOptimal else -INF


def distance_problem(net: ReLUNet, x: torch.Tensor, y: int, p: float, bounds: list[Bounds] | None,
                     max_radius: float | None) -> tuple[ReLUNet, torch.Tensor, LpBall | None, list[np.ndarray]]:
    """The shared start of ``mip_min_distance`` and ``miqp.miqp_min_distance`` (arguments as theirs):
    (net64, x64, the set searched, hidden-layer bounds as [2, n_l] arrays), the set being the box (inside
    the l_inf ball of radius 1) or the l_p ball of radius ``max_radius``, with CROWN over it when
    ``bounds`` is None; the set is None (and nothing computed) when x itself is misclassified."""
    net64, x64 = _double(net), _single(x, net)
    if bool(check_adversarial(net64, x64, x64, torch.tensor([y]), 0.0, p)[0]):
        return net64, x64, None, []
    ball = input_ball(x64, 1.0, INF, (0.0, 1.0)) if max_radius is None else input_ball(x64, max_radius, p)
    if bounds is None:
        with torch.no_grad():
            bounds = hidden_bounds(net64, ball, "crown")["crown"]
    return net64, x64, ball, _numpy_bounds(_one_point_bounds(bounds, len(net.layers) - 1))


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
    just past it along the ray from x, by the least of ``_PUSHES`` that makes it strictly
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
