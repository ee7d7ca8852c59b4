"""Exact verification of a ReLUNet by mixed-integer linear programming (Tjeng et al., the paper's [31]).

The network of eq (1) is encoded exactly (``milp``), with big-M constants from bound
propagation over the same input set; stable units need no binary. The input set is linear
for p = inf (a box) and p = 1 (auxiliary t >= |x' - x|, sum t <= eps), both intersected
with the pixel box. HiGHS solves the MILPs.

``mip_verify`` decides robustness at one radius, one target class at a time: it asks for a
point with f_y - f_s <= +margin_tol (a counterexample or a near-tie), stops at the first one found, and skips the targets
already certified by bound propagation. ``mip_min_distance`` computes the exact minimal
adversarial l_inf / l_1 distance (ground truth for tests of the other certificates).
Counterexamples are re-checked by a float64 forward pass before they count.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import highspy
import numpy as np
import torch

from mmru.models import ReLUNet
from mmru.verify.bounds import Bounds, hidden_bounds, input_ball, margin_spec, output_bounds
from mmru.verify.milp import OPTIONS, Program, abs_deviation, encode_relu_net, margin_row

INF = math.inf


@dataclass
class MIPResult:
    """Outcome of ``mip_verify`` for one point.

    status: "robust" (no target reachable), "attacked" (a checked counterexample), "timeout",
    or "unknown" (undecided otherwise: the solver's points failed the float64 re-check, or
    it stopped for another reason).
    objective_bound: a proven lower bound on min over the set and s != y of f_y - f_s.
    """

    status: str
    counterexample: torch.Tensor | None
    seconds: float
    objective_bound: float
    target: int | None = None


@dataclass
class MinDistance:
    """Minimal l_p distance from x to a point classified as some s != y (within the box).

    ``distance`` is attained by ``point`` (re-checked: f_y <= f_s + 1e-6 there); ``lower`` is
    the solver's proven lower bound; they agree up to the MIP gap when ``optimal``.
    """

    distance: float
    lower: float
    point: torch.Tensor | None
    target: int | None
    optimal: bool
    seconds: float


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
    if p not in (1.0, INF):
        raise ValueError(f"the MIP handles p = 1 and p = inf only, got {p}")
    return p


def mip_verify(
    net: ReLUNet,
    x: torch.Tensor,
    y: int,
    eps: float,
    p: float,
    time_limit: float = 120.0,
    bounds: list[Bounds] | None = None,
    box: tuple[float, float] | None = (0.0, 1.0),
    margin_tol: float = 1e-6,
) -> MIPResult:
    """Decide whether f classifies every x' in the l_p ball (p in {1, inf}) of radius eps as y.

    ``bounds``: pre-activation bounds of the hidden layers (e.g. ``layer_bounds(...)``, logits
    entry ignored) valid over this ball for this single point; CROWN in float64 when None.
    "robust" means the solver proved that no x' with f_y - f_s <= +margin_tol exists: the
    positive margin absorbs the solver's feasibility tolerances, so a tie or a misclassification
    by less than the tolerance cannot hide behind them (sound, never optimistic).
    """
    start = time.perf_counter()
    p, net64, x64 = _check_p(p), _double(net), _single(x, net)
    with torch.no_grad():
        if net64(x64).argmax(1).item() != y:
            return MIPResult("attacked", x64[0], time.perf_counter() - start, -INF, None)
        ball = input_ball(x64, float(eps), p, box)
        if bounds is None:
            passes = hidden_bounds(net64, ball, "crown")
        else:
            passes = {"crown": _one_point_bounds(bounds, len(net.layers) - 1)}
        spec = margin_spec(torch.tensor([y]), net.num_classes, torch.float64)
        margin_lb = output_bounds(net64, spec, ball, passes)[0][0].numpy()
    hidden = _numpy_bounds(passes["crown"])
    xf = x64.reshape(-1).numpy()
    lo, hi = (t[0].numpy() for t in ball.cube())

    prog = Program()
    x_cols = prog.add_cols(lo, hi)
    if p == 1.0:
        t = abs_deviation(prog, xf, x_cols, lo, hi)
        prog.add_row(t, np.ones(len(t)), -INF, eps)
    last = encode_relu_net(prog, net64, x_cols, hidden)

    bound = {s: float(margin_lb[s]) for s in range(net.num_classes) if s != y}
    targets = sorted((s for s in bound if bound[s] <= 0), key=bound.get)  # likeliest first
    undecided = set()  # why targets stayed open: "timeout" or "unknown"
    for s in targets:
        remaining = time_limit - (time.perf_counter() - start)
        if remaining <= 0:
            undecided.add("timeout")
            break
        cols, coef, const = margin_row(net64, last, y, s)
        cut = (cols, coef, -INF, margin_tol - const)  # f_y - f_s <= +margin_tol
        h = prog.solve(dict(zip(cols, coef)), [cut], remaining, {**OPTIONS, "mip_max_improving_sols": 1})
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            bound[s] = max(bound[s], margin_tol)
            continue
        info = h.getInfo()
        if info.mip_dual_bound > -INF:  # bounds the margin where it is <= +margin_tol
            bound[s] = max(bound[s], min(info.mip_dual_bound + const, margin_tol))
        if info.primal_solution_status == 2:  # feasible point available
            x_adv = _checked_counterexample(net64, ball, np.array(h.getSolution().col_value)[x_cols], y)
            if x_adv is not None:
                seconds = time.perf_counter() - start
                return MIPResult("attacked", x_adv.reshape(net.input_shape), seconds, min(bound.values()), s)
            undecided.add("unknown")
        else:
            undecided.add("timeout" if status == highspy.HighsModelStatus.kTimeLimit else "unknown")
    outcome = "timeout" if "timeout" in undecided else "unknown" if undecided else "robust"
    return MIPResult(outcome, None, time.perf_counter() - start, min(bound.values()))


def _checked_counterexample(net64: ReLUNet, ball, point: np.ndarray, y: int) -> torch.Tensor | None:
    """The solver's point, moved back into the set against tolerances; None unless misclassified."""
    x = ball.center[0]
    lo, hi = (t[0] for t in ball.cube())
    cand = torch.maximum(torch.minimum(torch.from_numpy(point), hi), lo)
    if ball.p == 1.0:
        norm = (cand - x).abs().sum()
        if norm > ball.eps:  # shrinking towards x keeps it in the (convex) box
            cand = x + (cand - x) * (ball.eps / norm)
    if not bool(ball.contains(cand.unsqueeze(0), tol=1e-12)):
        return None
    with torch.no_grad():
        logits = net64(cand.reshape(1, *net64.input_shape))[0]
    others = torch.cat([logits[:y], logits[y + 1 :]])
    return cand if logits[y] < others.max() else None


def mip_min_distance(
    net: ReLUNet,
    x: torch.Tensor,
    y: int,
    p: float,
    time_limit: float = 60.0,
    bounds: list[Bounds] | None = None,
) -> MinDistance:
    """min ||x' - x||_p over x' in [0, 1]^d with f_s(x') >= f_y(x') for some s != y (p in {1, inf}).

    One MILP per target class; the best distance so far caps the next ones. ``bounds`` must
    hold over the whole box (CROWN over the l_inf ball of radius 1, which covers it, if None).
    """
    start = time.perf_counter()
    p, net64, x64 = _check_p(p), _double(net), _single(x, net)
    with torch.no_grad():
        if net64(x64).argmax(1).item() != y:
            return MinDistance(0.0, 0.0, x64[0], None, True, time.perf_counter() - start)
        if bounds is None:
            bounds = hidden_bounds(net64, input_ball(x64, 1.0, INF, (0.0, 1.0)), "crown")["crown"]
    hidden = _numpy_bounds(_one_point_bounds(bounds, len(net.layers) - 1))
    xf = x64.reshape(-1).numpy()
    lo, hi = np.zeros_like(xf), np.ones_like(xf)

    prog = Program()
    x_cols = prog.add_cols(lo, hi)
    if p == 1.0:
        dev = abs_deviation(prog, xf, x_cols, lo, hi)
        objective = {int(j): 1.0 for j in dev}
    else:
        r = prog.add_cols(0.0, 1.0)[0]
        for i in range(len(xf)):  # r >= |x'_i - x_i|
            prog.add_row([x_cols[i], r], [1.0, -1.0], -INF, xf[i])
            prog.add_row([x_cols[i], r], [-1.0, -1.0], -INF, -xf[i])
        objective = {int(r): 1.0}
    last = encode_relu_net(prog, net64, x_cols, hidden)

    best, best_point, best_target, lower, optimal = INF, None, None, INF, True
    options = {**OPTIONS, "mip_rel_gap": 1e-7, "mip_abs_gap": 1e-10}
    for s in (s for s in range(net.num_classes) if s != y):
        remaining = time_limit - (time.perf_counter() - start)
        if remaining <= 0:
            optimal = False
            break
        cols, coef, const = margin_row(net64, last, y, s)
        rows = [(cols, coef, -INF, -const)]  # f_y - f_s <= 0
        if best < INF:  # only a closer point can matter
            norm_cols = list(objective)
            rows.append((np.array(norm_cols), np.ones(len(norm_cols)), -INF, best))
        h = prog.solve(objective, rows, remaining, options)
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            continue  # unreachable, or not closer than the best so far
        info = h.getInfo()
        lower = min(lower, info.mip_dual_bound)
        optimal &= status == highspy.HighsModelStatus.kOptimal
        if info.primal_solution_status != 2:
            continue
        point = torch.from_numpy(np.clip(np.array(h.getSolution().col_value)[x_cols], 0.0, 1.0))
        with torch.no_grad():
            logits = net64(point.reshape(1, *net.input_shape))[0]
        if logits[y] - logits[s] > 1e-6:
            optimal = False  # the solver's point is off by more than its tolerances
            continue
        dist = float(torch.linalg.vector_norm(point - x64.reshape(-1), ord=p))
        if dist < best:
            best, best_point, best_target = dist, point.reshape(net.input_shape), s
    lower = min(lower, best)
    return MinDistance(best, lower, best_point, best_target, optimal, time.perf_counter() - start)
