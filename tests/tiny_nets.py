"""Tiny random ReLU nets whose decision boundaries cross the [0, 1] box (for soundness tests)."""

import torch
from torch import nn

from mmru.models import ReLUNet


def through_the_box(net: ReLUNet, seed: int) -> ReLUNet:
    """Re-initialise so that every unit's hyperplane, and the decision boundaries, cross the
    input box: random weights, each bias the median pre-activation over random inputs.
    (Default inits leave tiny nets constant on the box, which would make the tests vacuous.)"""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(net.parameters()).dtype
    h = torch.rand(512, *net.input_shape, generator=gen, dtype=dtype)
    with torch.no_grad():
        for layer in net.layers:
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            h = h.flatten(1) if isinstance(layer, nn.Linear) else h
            if layer.bias is not None:
                layer.bias.zero_()
                layer.bias.sub_(layer(h).transpose(0, 1).flatten(1).median(dim=1).values)
            h = torch.relu(layer(h))
    return net


def tied_linear_net(seed: int, d: int = 6) -> tuple[ReLUNet, torch.Tensor]:
    """A float64 linear 2-class net whose two logits are equal, up to < 1e-15, at the box corner
    that minimises f_0 - f_1 (issue 8 item 2: bounds of +4e-16 there must not certify);
    returns the net and that corner [d]."""
    gen = torch.Generator().manual_seed(seed)
    net = ReLUNet([nn.Linear(d, 2)], (d,)).double()
    layer = net.layers[0]
    with torch.no_grad():
        layer.weight.copy_(torch.randn(2, d, generator=gen, dtype=torch.float64))
        corner = ((layer.weight[0] - layer.weight[1]) < 0).double()
        at_corner = layer.weight @ corner
        tie_break = float(torch.rand(1, generator=gen, dtype=torch.float64)) * 1e-15
        layer.bias.copy_(torch.stack([-at_corner[0], -at_corner[1] + tie_break]))
    return net, corner
