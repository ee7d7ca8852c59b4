"""The affine layers of a ReLUNet as linear maps on flat vectors.

Bound propagation treats layer k of eq (1) as z_k = W_k a_{k-1} + b_k on flattened vectors
(a_{-1} = x, the input). Conv layers are never turned into dense matrices on the hot path:
W_k is applied with the layer itself and W_k^T with ``conv_transpose2d``, which is what
back-substitution needs. ``dense_rows`` builds blocks of W_k explicitly where rows are
wanted (the units to bound on the dense path, the MIP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmru.models import ReLUNet


def in_shape(net: ReLUNet, k: int) -> tuple[int, ...]:
    """Shape (without batch) of the input of layer k."""
    return net.input_shape if k == 0 else net.layer_shapes[k - 1]


def _check(layer: nn.Module) -> None:
    if not isinstance(layer, nn.Conv2d):
        return
    if layer.padding_mode != "zeros":
        # Only zero padding makes a padded position a constant 0 rather than a copy of an input.
        raise ValueError(f"bound propagation needs zero padding, got {layer.padding_mode!r}")
    if isinstance(layer.padding, str):
        raise ValueError("bound propagation needs numeric conv padding, not 'same' / 'valid'")


def forward(net: ReLUNet, k: int, h: torch.Tensor, absolute: bool = False, bias: bool = True) -> torch.Tensor:
    """W_k h (+ b_k) for flat h [N, n_{k-1}]; ``absolute`` uses |W_k| (interval radii)."""
    layer = net.layers[k]
    _check(layer)
    w = layer.weight.abs() if absolute else layer.weight
    b = layer.bias if bias else None
    if isinstance(layer, nn.Linear):
        return F.linear(h, w, b)
    out = F.conv2d(
        h.reshape(-1, *in_shape(net, k)), w, b, layer.stride, layer.padding, layer.dilation, layer.groups
    )
    return out.flatten(1)


def transpose(net: ReLUNet, k: int, lam: torch.Tensor) -> torch.Tensor:
    """lam W_k for coefficients lam [..., n_k] on z_k: the coefficients [..., n_{k-1}] on a_{k-1}."""
    layer = net.layers[k]
    _check(layer)
    if isinstance(layer, nn.Linear):
        return lam @ layer.weight
    lead = lam.shape[:-1]
    out = F.conv_transpose2d(
        lam.reshape(-1, *net.layer_shapes[k]),
        layer.weight,
        stride=layer.stride,
        padding=layer.padding,
        output_padding=transpose_padding(net, k),
        groups=layer.groups,
        dilation=layer.dilation,
    )
    return out.reshape(*lead, input_size(net, k))


def transpose_padding(net: ReLUNet, k: int) -> tuple[int, int]:
    """``output_padding`` that makes conv layer k's transpose return its input's full size:
    conv_transpose2d cannot infer the input size when the stride drops border pixels."""
    layer = net.layers[k]
    _, h_in, w_in = in_shape(net, k)
    _, h_out, w_out = net.layer_shapes[k]
    return tuple(
        n_in - ((n_out - 1) * s - 2 * p + d * (kk - 1) + 1)
        for n_in, n_out, s, p, d, kk in zip(
            (h_in, w_in), (h_out, w_out), layer.stride, layer.padding, layer.dilation, layer.kernel_size
        )
    )


def bias_vector(net: ReLUNet, k: int) -> torch.Tensor:
    """b_k as a flat [n_k] vector (zeros when the layer has no bias)."""
    layer = net.layers[k]
    if layer.bias is None:
        return layer.weight.new_zeros(layer_size(net, k))
    if isinstance(layer, nn.Conv2d):
        # A conv bias is shared by every position of its channel; flat order is (C, H, W).
        return layer.bias.repeat_interleave(layer_size(net, k) // layer.out_channels)
    return layer.bias


def bias_dot(net: ReLUNet, k: int, lam: torch.Tensor) -> torch.Tensor:
    """<lam, b_k> for coefficients lam [..., n_k]."""
    return lam @ bias_vector(net, k)


def dense_rows(net: ReLUNet, k: int, rows: slice | None = None) -> torch.Tensor:
    """W_k (or the given block of its rows) as a dense [m, n_{k-1}] matrix."""
    layer = net.layers[k]
    if isinstance(layer, nn.Linear):
        w = layer.weight
        return w if rows is None else w[rows]
    units = torch.arange(layer_size(net, k), device=layer.weight.device)
    units = units if rows is None else units[rows]
    basis = torch.zeros(len(units), layer_size(net, k), dtype=layer.weight.dtype, device=layer.weight.device)
    basis[torch.arange(len(units)), units] = 1.0
    return transpose(net, k, basis)


def layer_size(net: ReLUNet, k: int) -> int:
    """n_k, the number of units of layer k's pre-activation."""
    return int(torch.tensor(net.layer_shapes[k]).prod())


def input_size(net: ReLUNet, k: int) -> int:
    """n_{k-1}, the size of layer k's input."""
    return int(torch.tensor(in_shape(net, k)).prod())
