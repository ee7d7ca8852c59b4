"""The first conv layer's affine maps at training speed: W_1 v by image patches, and v W_1 by sub-pixel conv.

The same maps as ``mmru.verify.affine.forward`` / ``transpose`` for layer 0 (equal up to rounding,
tests compare them), computed the way the CPU runs fast. Measured on cnn_small, batch 128, 2 cores:
  * W_1 v: the first layer of an image net has one or three input channels, where the conv
    kernels of the CPU backend are slow (1.4 ms forward, 3.8 ms with the weight gradient, for
    13 MFLOP). A training step applies W_1 to several inputs that need no gradient (the centre,
    the box's corners), so their windows are cut once by a strided view and W_1 is one matmul:
    0.7 ms forward + backward. Its output comes out in (H, W, C) order, ``channels_last``'s.
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
    """W_1 v + b_1 for several inputs v of one batch, by one strided view and a matmul each.

    For a conv the result is flat in (H, W, C) order, the order ``channels_last`` keeps."""

    def __init__(self, net: ReLUNet):
        self.net, self.layer = net, net.layers[0]
        self.by_patches = _plain_conv(self.layer)

    def __call__(self, v: Tensor, absolute: bool = False, bias: bool = True) -> Tensor:
        """W_1 v (+ b_1) for flat v [B, d] that needs no gradient; ``absolute`` uses |W_1|."""
        layer = self.layer
        if not self.by_patches:
            out = affine.forward(self.net, 0, v, absolute=absolute, bias=bias)
            if isinstance(layer, nn.Linear):
                return out
            c, h, w = self.net.layer_shapes[0]
            return out.reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(out.shape)
        w = layer.weight.abs() if absolute else layer.weight
        # [B P, C k k] @ [C k k, O]: one matmul (the bias added in it), whose weight gradient is one more
        patches, weight = self.patches(v), w.flatten(1).t()
        if bias and layer.bias is not None:
            out = torch.addmm(layer.bias, patches, weight)
        else:
            out = patches @ weight
        return out.reshape(v.shape[0], -1)  # (P, O): the flat (H, W, C) order of the output

    def patches(self, v: Tensor) -> Tensor:
        """The layer's input windows [B P, C k k] of flat v, zero padded: row b P + p is window p of
        image b (positions row-major), its entries in ``F.unfold``'s (C, k, k) order."""
        layer = self.layer
        (c, h, w), (kh, kw), (sh, sw), (ph, pw) = (affine.in_shape(self.net, 0), layer.kernel_size,
                                                    layer.stride, layer.padding)
        _, h_out, w_out = self.net.layer_shapes[0]
        image = F.pad(v.reshape(-1, c, h, w), (pw, pw, ph, ph))
        sb, sc, sy, sx = image.stride()
        windows = image.as_strided((image.shape[0], h_out, w_out, c, kh, kw), (sb, sy * sh, sx * sw, sc, sy, sx))
        return windows.reshape(-1, c * kh * kw)


def subpixel_weight(weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """The [C s_h s_w, O, T, U] kernel of the stride-1 conv whose pixel shuffle is the transpose of a
    stride-s conv with ``weight`` [O, C, k_h, k_w] (T = ceil(k_h / s_h), U = ceil(k_w / s_w)).

    Phase (r, r') of the transposed output takes the taps a = s t + r of the kernel; a transposed conv
    is a true convolution, hence the flip that makes it the correlation ``conv2d`` computes.
    """
    o, c, kh, kw = weight.shape
    sh, sw = stride
    t, u = math.ceil(kh / sh), math.ceil(kw / sw)
    taps = F.pad(weight, (0, u * sw - kw, 0, t * sh - kh)).reshape(o, c, t, sh, u, sw).flip(2, 4)
    return taps.permute(1, 3, 5, 0, 2, 4).reshape(c * sh * sw, o, t, u)


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
