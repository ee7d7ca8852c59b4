"""What the exact stage starts from, whichever solver (HiGHS in ``mip``, SCIP in ``miqp``) and whichever
question (robustness at one radius, or the minimal adversarial distance): the net and the point in
float64 on the CPU, the input set, the big-M bounds, and the float64 re-checks that turn a solver's
point into a counterexample (``mmru.attacks.check_adversarial``, the project's one definition).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmru.attacks import check_adversarial, snap_to_ball
from mmru.attacks.geometry import CHECK_MARGIN
from mmru.models import ReLUNet
from mmru.verify import lp_tightening
from mmru.verify.ball import LpBall
from mmru.verify.bounds import (
    Bounds,
    hidden_bounds,
    input_ball,
    margin_spec,
    output_bounds,
    rounding_tolerance,
)
from mmru.verify.milp import Program, abs_deviation

INF = float("inf")

#: relative pushes along the ray from x through the solver's boundary point, tried in turn
#: until the pushed point is strictly misclassified (``mip_min_distance``)
_PUSHES = (0.0, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6)

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


def linear_input_program(x64: torch.Tensor, ball: LpBall, eps: float, p: float) -> Callable[[], tuple[Program, np.ndarray]]:
    """A builder of the program's input part for the point ``x64`` (one, float64): the ball's cube ∩ box
    as column bounds and, for p = 1, the rows of sum_i |x'_i - x_i| <= eps (p = 2 adds its quadratic
    constraint in SCIP, ``miqp``)."""
    xf = x64.reshape(-1).numpy()
    lo, hi = (t[0].numpy() for t in ball.cube())

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
