"""The first conv layer's affine maps at training speed: W_1 v and v W_1 as stride-1 convs of stride phases.

The same maps as ``mmru.verify.affine.forward`` / ``transpose`` for layer 0 (equal up to rounding,
tests compare them), computed the way the CPU runs fast. Measured on cnn_small, batch 128, 2 cores:
  * W_1 v: the first layer of an image net has one or three input channels, where the conv
    kernels of the CPU backend are slow (1.4 ms forward, 3.8 ms with the weight gradient, for
    13 MFLOP). Rearranged space-to-depth (each stride x stride block of pixels one position, its
    pixels channels), the same map is a stride-1 conv with C s^2 input channels and the kernel split
    into its phases, which those kernels run fast: on the three inputs of an l1 ball's bounds, 3.4 ms
    forward + backward against 5.4 ms for a patch matmul (the previous way here). Its output comes
    out channels-last, the (H, W, C) order of ``channels_last``.
  * v W_1 (CROWN-IBP's back-substitution to the input): ``conv_transpose2d`` with one output
    channel is 5x slower forward + backward than the equivalent stride-1 conv with the kernel split
    into its stride x stride phases, followed by ``pixel_shuffle`` (the sub-pixel identity). With
    three or more channels ``conv_transpose2d`` is as fast or faster, so it is kept there.
Training bounds only: ``mmru.verify`` keeps its own maps for certificates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmru.models import ReLUNet
from mmru.verify import affine


def _plain_conv(layer: nn.Module) -> bool:
    """A zero-padded, numeric-padding, ungrouped, undilated conv: the case these maps handle."""
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and tuple(layer.dilation) == (1, 1)
            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str))


class FirstLayer:
    """W_1 v + b_1 for several inputs v of one batch, as a stride-1 conv of their space-to-depth images.

    For a conv the result is flat in (H, W, C) order, the order ``channels_last`` keeps."""

    def __init__(self, net: ReLUNet):
        self.net, self.layer = net, net.layers[0]
        self.by_phases = _plain_conv(self.layer)

    def __call__(self, v: Tensor, absolute: bool = False, bias: bool = True) -> Tensor:
        """W_1 v (+ b_1) for flat v [B, d] that needs no gradient; ``absolute`` uses |W_1|."""
        layer = self.layer
        if not self.by_phases:
            out = affine.forward(self.net, 0, v, absolute=absolute, bias=bias)
            if isinstance(layer, nn.Linear):
                return out
            c, h, w = self.net.layer_shapes[0]
            return out.reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(out.shape)
        weight = layer.weight.abs() if absolute else layer.weight
        out = F.conv2d(self.space_to_depth(v), phase_weight(weight, layer.stride), layer.bias if bias else None)
        return out.permute(0, 2, 3, 1).reshape(v.shape[0], -1)  # channels-last: no copy

    def space_to_depth(self, v: Tensor) -> Tensor:
        """Flat v as [B, C s_h s_w, Q, Q'], channels-last: pixel (s q + r, s' q' + r') of the zero-padded
        image is channel (c, r, r') at (q, q'). Padded (or cropped) at the bottom and right to the
        Q = H_out + T - 1 rows of blocks a stride-1 conv with T x U taps needs for the layer's output."""
        layer = self.layer
        (c, h, w), (kh, kw), (sh, sw), (ph, pw) = (affine.in_shape(self.net, 0), layer.kernel_size,
                                                    layer.stride, layer.padding)
        _, h_out, w_out = self.net.layer_shapes[0]
        q, q2 = h_out + math.ceil(kh / sh) - 1, w_out + math.ceil(kw / sw) - 1
        image = F.pad(v.reshape(-1, c, h, w), (pw, sw * q2 - w - pw, ph, sh * q - h - ph))  # < 0 crops
        n = image.shape[0]
        blocks = image.reshape(n, c, q, sh, q2, sw).permute(0, 2, 4, 1, 3, 5).reshape(n, q, q2, c * sh * sw)
        return blocks.permute(0, 3, 1, 2)


def phase_weight(weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """The [O, C s_h s_w, T, U] kernel of the stride-1 conv on ``FirstLayer.space_to_depth``'s image
    that equals a stride-s conv with ``weight`` [O, C, k_h, k_w]: tap a = s t + r of the kernel reads
    phase r of block t (T = ceil(k_h / s_h), U = ceil(k_w / s_w); taps past k_h, k_w are zero)."""
    o, c, kh, kw = weight.shape
    sh, sw = stride
    t, u = math.ceil(kh / sh), math.ceil(kw / sw)
    taps = F.pad(weight, (0, u * sw - kw, 0, t * sh - kh)).reshape(o, c, t, sh, u, sw)
    return taps.permute(0, 1, 3, 5, 2, 4).reshape(o, c * sh * sw, t, u)


def subpixel_weight(weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """The [C s_h s_w, O, T, U] kernel of the stride-1 conv whose pixel shuffle is the transpose of a
    stride-s conv with ``weight`` [O, C, k_h, k_w]: the adjoint of ``phase_weight``'s conv, its
    kernel with input and output channels swapped and flipped (a transposed conv is a true
    convolution; ``conv2d`` computes a correlation)."""
    return phase_weight(weight, stride).transpose(0, 1).flip(2, 3)


def transpose_image(net: ReLUNet, lam: Tensor) -> Tensor:
    """lam W_1 for coefficients lam [N, O, H', W'] on the first conv layer's output: [N, C, H, W]."""
    layer = net.layers[0]
    if not (_plain_conv(layer) and layer.in_channels == 1):
        return F.conv_transpose2d(lam, layer.weight, stride=layer.stride, padding=layer.padding,
                                  output_padding=affine.transpose_padding(net, 0), groups=layer.groups,
                                  dilation=layer.dilation)
    _, h, w = affine.in_shape(net, 0)
    kh, kw = layer.kernel_size
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    t, u = math.ceil(kh / sh), math.ceil(kw / sw)
    phases = F.conv2d(lam, subpixel_weight(layer.weight, (sh, sw)), padding=(t - 1, u - 1))
    full = F.pixel_shuffle(phases, sh) if sh == sw else _shuffle(phases, sh, sw)
    # full[.., s q + r, ..] is input pixel s q + r - p; pixels past the last window's reach get 0
    short_h, short_w = max(ph + h - full.shape[-2], 0), max(pw + w - full.shape[-1], 0)
    if short_h or short_w:
        full = F.pad(full, (0, short_w, 0, short_h))
    return full[..., ph:ph + h, pw:pw + w]


def _shuffle(phases: Tensor, sh: int, sw: int) -> Tensor:
    """``pixel_shuffle`` for unequal strides: [N, C sh sw, Q, Q'] -> [N, C, Q sh, Q' sw]."""
    n, ch, q, q2 = phases.shape
    c = ch // (sh * sw)
    return phases.reshape(n, c, sh, sw, q, q2).permute(0, 1, 4, 2, 5, 3).reshape(n, c, q * sh, q2 * sw)
