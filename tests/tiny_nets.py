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
