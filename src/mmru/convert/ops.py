"""The few operations an imported network is reduced to before it becomes a :class:`ReLUNet`.

Both importers (PyTorch, ONNX) translate a model into a chain of these, in float64, applied
to one batch of inputs of a known per-sample shape; :mod:`mmru.convert.folding` then merges
every linear operation between two ReLUs into the affine layers of eq (1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmru.errors import UserError


class ConversionError(UserError, ValueError):
    """A model mmru cannot turn into an exactly equal ReLUNet; the message names the layer and why."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to one short line, to quote inside a one-sentence error."""
    return (str(err).splitlines() or [type(err).__name__])[0][:160]


@dataclass
class Affine:
    """A Conv2d (zero padding, dilation 1, groups 1) or Linear layer, float64."""

    layer: nn.Conv2d | nn.Linear
    name: str


@dataclass
class Scale:
    """x * scale + shift elementwise; both tensors have the full per-sample shape (float64).

    Batch normalisation in eval mode, an input normalisation (x - mean) / std, and arithmetic
    with constants all become one of these.
    """

    scale: torch.Tensor
    shift: torch.Tensor
    name: str


@dataclass
class Relu:
    name: str


@dataclass
class Flatten:
    """(C, H, W) -> C*H*W in PyTorch's order, the order ReLUNet flattens in before a Linear."""

    name: str


Op = Affine | Scale | Relu | Flatten


def apply(op: Op, h: torch.Tensor) -> torch.Tensor:
    """The operation on a batch ``h``."""
    if isinstance(op, Affine):
        if isinstance(op.layer, nn.Linear) and h.dim() > 2:
            h = h.flatten(1)
        return op.layer(h)
    if isinstance(op, Scale):
        return h * op.scale + op.shift
    if isinstance(op, Relu):
        return torch.relu(h)
    return h.flatten(1)


def scale_from(shape: tuple[int, ...], name: str, scale=1.0, shift=0.0) -> Scale:
    """A :class:`Scale` on inputs of per-sample ``shape`` from constants that broadcast to it.

    A constant may carry a leading batch axis of size 1 (as ONNX and ``mean.view(1, 3, 1, 1)``
    write it) but must not enlarge the activation, e.g. a per-sample vector added to a batch.
    """
    full = []
    for value in (scale, shift):
        c = torch.as_tensor(value, dtype=torch.float64).detach()
        try:
            out = torch.broadcast_shapes(c.shape, (1, *shape))
        except RuntimeError:
            out = None
        if out != (1, *shape):
            raise ConversionError(f"{name}: a constant of shape {list(c.shape)} does not broadcast to the "
                                  f"activation's shape {[1, *shape]}")
        if not torch.isfinite(c).all():
            raise ConversionError(f"{name}: a constant is infinite or NaN (a division by zero?)")
        full.append(c.expand(1, *shape)[0].clone())
    return Scale(full[0], full[1], name)


def avg_pool_conv(channels: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                  divisor: float) -> nn.Conv2d:
    """Average pooling as a strided conv: weight 1/divisor from each channel to itself only.

    Exact for zero padding counted in the average (count_include_pad), or no padding.
    """
    conv = nn.Conv2d(channels, channels, kernel, stride=stride, padding=padding, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(channels):
            conv.weight[c, c] = 1.0 / divisor
    return conv


def check_conv(conv: nn.Conv2d, name: str) -> None:
    """What mmru's bound propagation and region geometry need from a conv layer."""
    if conv.padding_mode != "zeros":
        raise ConversionError(f"layer '{name}' pads with {conv.padding_mode!r}; mmru needs zero padding")
    if isinstance(conv.padding, str):
        raise ConversionError(f"layer '{name}' has padding={conv.padding!r}; give the padding as numbers")
    if conv.dilation != (1, 1) or conv.groups != 1:
        raise ConversionError(f"layer '{name}' has dilation {conv.dilation} and groups {conv.groups}; "
                              "mmru's certificates need dilation 1 and groups 1")
