"""LP tightening of the big-M constants (``mmru.verify.lp_tightening``): the safe dual bound holds for
any multipliers and is tight at the solver's; tightened bounds contain the exact bounds (MILP) and are
never looser than the bound propagation they start from, and tighter somewhere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmru.models import ReLUNet, mlp
from mmru.verify import affine
from mmru.verify.bounds import hidden_bounds, input_ball
from mmru.verify.lp_tightening import safe_lower_bound, tighten
from mmru.verify.milp import encode_relu_net
from mmru.verify.problem import linear_input_program
from tiny_nets import through_the_box

INF = math.inf

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(net, p, eps, seed=5):
    x = torch.rand(1, *net.input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ball = input_ball(x, eps, p)
    with torch.no_grad():
        hidden = [torch.cat([lo, hi]).numpy() for lo, hi in hidden_bounds(net, ball, "crown")["crown"]]
    return hidden, linear_input_program(x, ball, eps, p)


def _exact_range(net, input_program, hidden, k, j, relaxed=False):
    """min and max of z_kj over the input set, by the MILP (binaries kept), or over its LP relaxation."""
    prog, x_cols = input_program()
    enc = encode_relu_net(prog, net, x_cols, hidden[:k])
    if relaxed:
        prog.binary = []
    w = affine.dense_rows(net, k).detach().numpy()
    g = enc.E.T @ w[j]
    const = float(w[j] @ enc.c + affine.bias_vector(net, k).detach().numpy()[j])
    out = []
    for sign in (1.0, -1.0):
        h = prog.solve({int(c): sign * v for c, v in zip(enc.cols, g) if v != 0}, [], 120.0,
                       {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0})
        assert h.modelStatusToString(h.getModelStatus()) == "Optimal"
        out.append(sign * h.getInfo().objective_function_value + const)
    return out[0], out[1]


NETS = {"mlp": lambda: through_the_box(mlp((6,), 3, (10, 10, 8)).double(), 3),
        "conv": lambda: through_the_box(ReLUNet([nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Conv2d(3, 4, 2),
                                                 nn.Linear(16, 12), nn.Linear(12, 3)], (1, 6, 6)).double(), 4)}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("p,eps", [(INF, 0.12), (1.0, 0.5)])
def test_tightened_bounds_contain_the_exact_ones_and_tighten(name, p, eps):
    net = NETS[name]()
    hidden, input_program = _case(net, p, eps)
    tight = tighten(net, input_program, hidden, deadline=INF)
    assert np.array_equal(tight[0], hidden[0])  # the first layer's bounds are left as they are
    gained = 0.0
    for k in range(1, len(hidden)):
        assert (tight[k][0] >= hidden[k][0]).all() and (tight[k][1] <= hidden[k][1]).all()  # never looser
        gained += float((hidden[k][1] - hidden[k][0] - (tight[k][1] - tight[k][0])).sum())
        for j in np.nonzero((hidden[k][0] < 0) & (hidden[k][1] > 0))[0][:4]:  # a few units: MILPs each
            low, high = _exact_range(net, input_program, hidden, k, j)
            assert tight[k][0][j] <= low + 1e-9 and tight[k][1][j] >= high - 1e-9
            if k == 1:  # layer 1's LP is over the bounds given: the tightened bound is its optimum, safely
                low, high = _exact_range(net, input_program, hidden, k, j, relaxed=True)
                assert low - 1e-7 <= tight[k][0][j] <= low + 1e-12 and high - 1e-12 <= tight[k][1][j] <= high + 1e-7
    assert gained > 1e-3  # the LP relaxation is tighter than CROWN somewhere


def test_the_safe_bound_holds_for_any_multipliers_and_is_tight_at_the_solvers():
    net = NETS["mlp"]()
    hidden, input_program = _case(net, INF, 0.12)
    prog, x_cols = input_program()
    enc = encode_relu_net(prog, net, x_cols, hidden[:2])
    prog.binary = []
    gen = np.random.default_rng(0)
    for trial in range(5):
        cost = np.zeros(len(prog.col_lo))
        cost[enc.cols] = gen.normal(size=len(enc.cols))
        h = prog.solve({i: float(c) for i, c in enumerate(cost) if c != 0}, [], 60.0, {})
        optimum = h.getInfo().objective_function_value
        y = np.array(h.getSolution().row_dual)
        at_solver = safe_lower_bound(prog, cost, y)
        assert optimum - 1e-7 <= at_solver <= optimum + 1e-12
        for scale in (0.0, 0.5, 3.0):  # any multipliers: a valid, looser bound
            noisy = y * scale + gen.normal(size=len(y)) * 0.1
            assert safe_lower_bound(prog, cost, noisy) <= optimum + 1e-12
