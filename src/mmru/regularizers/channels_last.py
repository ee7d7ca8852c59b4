"""The training bounds' affine maps with values on images kept in channels-last order.

Values v [..., n_k] on a conv layer's output (IBP's bounds, CROWN's coefficients lam) are kept flat
in (H, W, C) order rather than the (C, H, W) order of ``mmru.verify.affine``. Viewed as
[N, C, H, W] they are then a channels-last tensor, with no copy, and the CPU's convolutions are
faster on those: measured on cnn_small's second layer with 1152 rows (9 margins x 128 points), the
transposed convolution takes 38 ms forward + backward against 60 ms, and the first layer's sub-pixel
transpose 34 ms against 42; the permutes the (C, H, W) order needs around them are gone too. The
biases follow the same order, and a dense layer after a conv takes its weight's columns in it. The
network's input stays in (C, H, W) order (the ball's centre is x as given), and so do the
coefficients on it. Training bounds only: tests compare every map with ``mmru.verify.affine``'s.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmru.models import ReLUNet
from mmru.regularizers import first_layer
from mmru.verify import affine


def _image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def _dense_weight(net: ReLUNet, k: int) -> Tensor:
    """A dense layer's weight with its columns in this module's order of its input."""
    weight = net.layers[k].weight
    source = affine.in_shape(net, k)
    if k > 0 and _image(source):  # the layer reads a conv's output, flattened as (C, H, W)
        weight = weight.reshape(-1, *source).permute(0, 2, 3, 1).reshape(weight.shape)
    return weight


def forward(net: ReLUNet, k: int, v: Tensor, absolute: bool = False, bias: bool = True) -> Tensor:
    """W_k v (+ b_k) for v [B, n_{k-1}] in this module's order (k >= 1), as ``affine.forward``;
    ``absolute`` uses |W_k|. The result is in this module's order of layer k's output."""
    layer = net.layers[k]
    if isinstance(layer, nn.Linear):
        weight = _dense_weight(net, k)
        weight = weight.abs() if absolute else weight
        return F.linear(v, weight, layer.bias if bias else None)
    c, h, w = affine.in_shape(net, k)
    image = v.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # a channels-last view, no copy
    weight = layer.weight.abs() if absolute else layer.weight
    out = F.conv2d(image, weight, layer.bias if bias else None, stride=layer.stride, padding=layer.padding,
                   dilation=layer.dilation, groups=layer.groups)
    return out.permute(0, 2, 3, 1).reshape(v.shape[0], -1)


def bias_vector(net: ReLUNet, k: int) -> Tensor:
    """b_k flat in this module's order: a conv's bias repeats per position, channels fastest."""
    layer = net.layers[k]
    if isinstance(layer, nn.Conv2d) and layer.bias is not None:
        return layer.bias.repeat(affine.layer_size(net, k) // layer.out_channels)
    return affine.bias_vector(net, k)


def transpose(net: ReLUNet, k: int, lam: Tensor) -> Tensor:
    """lam W_k, lam [..., n_k] in this module's order; the result is in the order of layer k - 1's
    output (for k = 0: the input, in (C, H, W) order), as ``affine.transpose`` up to that order."""
    layer = net.layers[k]
    lead = lam.shape[:-1]
    if isinstance(layer, nn.Linear):
        return lam @ _dense_weight(net, k)
    c, h, w = net.layer_shapes[k]
    image = lam.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # a channels-last view, no copy
    if k == 0:
        return first_layer.transpose_image(net, image).reshape(*lead, affine.input_size(net, 0))
    out = F.conv_transpose2d(image, layer.weight, stride=layer.stride, padding=layer.padding,
                             output_padding=affine.transpose_padding(net, k), groups=layer.groups,
                             dilation=layer.dilation)
    return out.permute(0, 2, 3, 1).reshape(*lead, affine.input_size(net, k))
