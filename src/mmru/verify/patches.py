"""Back-substitution for the units of the leading conv layers, one receptive field at a time.

A unit of conv layer k (when layers 1..k are all convs) depends only on a window of the
input, its receptive field: 10x10 pixels for the second conv of cnn_small, against 784 for
a dense row. Keeping the coefficients as patches over these windows makes bounding the
1568 units of that layer about as cheap as a forward pass, where dense rows cost
B x 1568 x 3136 numbers. The arithmetic is the one of ``linear_bounds.backsubstitute``:
the same relaxations, bias and intercept terms; only the layout differs.

Layout: coefficients on a layer's output (or the input) are [B|1, P, O, C*h*w] for the
P = H_k * W_k output positions, O = channels of layer k, and the window [C, h, w] below.
Windows at position (i, j) start at (i*S - P_h, j*S - P_w); windows reaching past the
image edge see zero padding, i.e. constants, never units or inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmru.models import ReLUNet
from mmru.verify.ball import LpBall
from mmru.verify.relaxation import Relaxation

Bounds = tuple[torch.Tensor, torch.Tensor]


def applies(net: ReLUNet, k: int) -> bool:
    """Whether layers 1..k are plain convs (zero padding, no dilation, no groups)."""
    return all(
        isinstance(layer, nn.Conv2d)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and layer.dilation == (1, 1)
        and layer.groups == 1
        for layer in net.layers[: k + 1]
    )


@dataclass(frozen=True)
class _Windows:
    """Window (size, stride, offset) of every output position of layer k on some layer below."""

    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    positions: tuple[int, int]

    def down(self, conv: nn.Conv2d) -> _Windows:
        """The windows one conv further down: a window of the conv's output grows by its kernel."""
        size = tuple((n - 1) * s + kk for n, s, kk in zip(self.size, conv.stride, conv.kernel_size))
        stride = tuple(a * s for a, s in zip(self.stride, conv.stride))
        padding = tuple(p * s + q for p, s, q in zip(self.padding, conv.stride, conv.padding))
        return _Windows(size, stride, padding, self.positions)

    def unfold(self, image: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, P, C*h*w], zero outside the image."""
        (ph, pw), (sh, sw), (ho, wo), (h, w) = self.padding, self.stride, self.positions, self.size
        height, width = image.shape[-2:]
        # Pad so that exactly ho x wo windows fit (a negative pad crops unused border rows).
        pads = [pw, (wo - 1) * sw - pw + w - width, ph, (ho - 1) * sh - ph + h - height]
        # Strided views, one copy: much faster on CPU than F.unfold (im2col).
        cols = F.pad(image, pads).unfold(2, h, sh).unfold(3, w, sw)  # [N, C, ho, wo, h, w]
        return cols.permute(0, 2, 3, 1, 4, 5).reshape(image.shape[0], ho * wo, -1)


def _window_transpose(conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """The matrix [C_out*h*w, C_in*h'*w'] mapping coefficients on an h x w window of the conv's
    output to those on the window below it (a conv_transpose without padding).

    One small matmul per layer: several times faster than ``conv_transpose2d`` on the many
    tiny patches.
    """
    w = conv.weight
    basis = torch.eye(conv.out_channels * size[0] * size[1], dtype=w.dtype, device=w.device)
    out = F.conv_transpose2d(basis.reshape(-1, conv.out_channels, *size), w, stride=conv.stride)
    return out.flatten(1)


def _patch_dot(lam: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """<lam, v> per position: lam [B|1, P|1, O, D], v [B, P, D] -> [B, P, O]."""
    return (lam @ v.unsqueeze(-1)).squeeze(-1)


def elements_per_example(net: ReLUNet, k: int, adaptive: bool) -> int:
    """Size of the largest coefficient tensor per example, to size batch chunks."""
    layer = net.layers[k]
    windows = _Windows(layer.kernel_size, layer.stride, layer.padding, tuple(net.layer_shapes[k][1:]))
    largest = layer.in_channels * windows.size[0] * windows.size[1]
    for j in reversed(range(k)):
        windows = windows.down(net.layers[j])
        largest = max(largest, net.layers[j].in_channels * windows.size[0] * windows.size[1])
    positions = windows.positions[0] * windows.positions[1]
    return positions * layer.out_channels * largest * (2 if adaptive else 1)


def conv_stack_bounds(net: ReLUNet, k: int, ball: LpBall, relaxations: list[Relaxation]) -> Bounds:
    """Bounds [B, n_k] on every unit of conv layer k (``applies(net, k)``), in (C, H, W) order."""
    layer = net.layers[k]
    batch = ball.center.shape[0]
    adaptive = k > 0 and relaxations[0].lower_slope is not None
    lam = layer.weight.flatten(1)[None, None]  # [1, 1, O, C*kh*kw]: the same kernel everywhere
    const = layer.bias if layer.bias is not None else lam.new_zeros(layer.out_channels)
    if adaptive:  # the upper bound of z is minus the lower bound of -z
        lam, const = torch.cat([lam, -lam], dim=2), torch.cat([const, -const])
    windows = _Windows(layer.kernel_size, layer.stride, layer.padding, tuple(net.layer_shapes[k][1:]))
    c_lo = c_hi = const
    for j in reversed(range(k)):
        r, conv, shape = relaxations[j], net.layers[j], net.layer_shapes[j]

        def view(v: torch.Tensor) -> torch.Tensor:
            return windows.unfold(v.reshape(batch, *shape)).unsqueeze(2)  # [B, P, 1, D]

        slope, intercept = view(r.slope), view(r.intercept)
        neg = lam.clamp(max=0)
        c_lo = c_lo + (neg * intercept).sum(-1)
        if adaptive:
            lam = lam * torch.where(lam >= 0, view(r.lower_slope), slope)
        else:
            c_hi = c_hi + ((lam - neg) * intercept).sum(-1)
            lam = lam * slope
        # Padded positions of the window carry slope 0, so they add no bias.
        p, o = lam.shape[1:3]
        if conv.bias is not None:
            bias = lam.reshape(batch, p, o, shape[0], -1).sum(-1) @ conv.bias
            c_lo, c_hi = c_lo + bias, c_hi + bias
        lam = lam.reshape(batch, p, o, -1) @ _window_transpose(conv, windows.size)
        windows = windows.down(conv)

    def view_input(v: torch.Tensor) -> torch.Tensor:
        return windows.unfold(v.reshape(-1, *net.input_shape))

    lo, hi = ball.cube()
    eps = ball.radius()
    mask = view_input(torch.ones_like(ball.center[:1])).unsqueeze(2)  # 0 where a window sees padding
    lower, upper = ball.extremes(
        lam,
        view_input(ball.center),
        view_input(lo),
        view_input(hi),
        _patch_dot,
        eps.reshape(-1, 1, 1) if eps.dim() else eps,
        mask,
    )
    lower, upper = c_lo + lower, c_hi + upper  # [B, P, O(or 2O)]
    if adaptive:
        o = lower.shape[-1] // 2
        lower, upper = lower[..., :o], -lower[..., o:]
    return lower.transpose(1, 2).flatten(1), upper.transpose(1, 2).flatten(1)
