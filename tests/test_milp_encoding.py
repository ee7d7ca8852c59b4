"""The big-M encoding of ``mmru.verify.milp`` is exact: with the input columns fixed to a point of
the ball, the program has one solution and its margin is the network's, for MLPs and conv nets
whose stable units are folded into affine maps; and only the unstable units get a binary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmru.models import ReLUNet, mlp
from mmru.verify.bounds import hidden_bounds, input_ball
from mmru.verify.milp import Program, encode_relu_net, margin_row
from tiny_nets import through_the_box

INF = math.inf

pytestmark = pytest.mark.usefixtures("one_thread")


def _nets():
    conv = [nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Conv2d(3, 4, 2), nn.Linear(16, 10), nn.Linear(10, 3)]
    return [through_the_box(mlp((5,), 3, (12, 9, 7)).double(), 1),
            through_the_box(ReLUNet(conv, (1, 6, 6)).double(), 2)]


@pytest.mark.parametrize("net", _nets(), ids=["mlp", "conv"])
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_fixed_inputs_give_the_network_margin(net, p):
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(1, *net.input_shape, generator=gen, dtype=torch.float64)
    eps = {1.0: 0.4, 2.0: 0.3, INF: 0.1}[p]
    ball = input_ball(x, eps, p)
    with torch.no_grad():
        hidden = [torch.cat([lo, hi]).numpy() for lo, hi in hidden_bounds(net, ball, "crown")["crown"]]
        y = int(net(x).argmax())
    unstable = sum(int(((h[0] < 0) & (h[1] > 0)).sum()) for h in hidden)
    stable = sum(h.shape[1] for h in hidden) - unstable
    assert unstable > 0 and stable > 0  # both kinds of unit are exercised

    for trial in range(4):
        # a point of the ball (inside the box), as the MILP's input columns
        direction = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        point = (x + direction / torch.linalg.vector_norm(direction.flatten(), ord=p) * eps * 0.9).clamp(0, 1)
        prog = Program()
        xf = point.flatten().numpy()
        x_cols = prog.add_cols(xf, xf)
        encoded = encode_relu_net(prog, net, x_cols, hidden)
        assert len(prog.binary) == unstable and len(prog.col_lo) == len(xf) + 2 * unstable
        with torch.no_grad():
            logits = net(point)[0].numpy()
        for s in (s for s in range(3) if s != y):
            cols, coef, const = margin_row(net, encoded, y, s)
            for sign in (1.0, -1.0):  # the program's margin has one value: min = max = the net's
                h = prog.solve({int(c): sign * v for c, v in zip(cols, coef)}, [], 60.0, {})
                assert h.modelStatusToString(h.getModelStatus()) == "Optimal"
                margin = sign * h.getInfo().objective_function_value + const
                assert margin == pytest.approx(logits[y] - logits[s], abs=1e-7)
