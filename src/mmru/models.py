"""ReLU networks as a plain sequence of affine layers.

Every certificate and regularizer in mmru needs the pre-activations g^(l)(x) of the paper's
eq (1), so a network here is nothing but affine layers (``nn.Conv2d`` / ``nn.Linear``) with a
ReLU after every layer but the last. A ``Linear`` that follows a conv layer flattens its input
in PyTorch's (C, H, W) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

AffineLayer = nn.Conv2d | nn.Linear


class ReLUNet(nn.Module):
    """f(x) = W^(L+1) relu(... relu(W^(1) x + b^(1)) ...) + b^(L+1), eq (1).

    ``layers`` are applied in order (and appear in ``net.modules()`` in that order); a ReLU
    sits between consecutive layers.
    """

    def __init__(self, layers: Sequence[AffineLayer], input_shape: Sequence[int]):
        super().__init__()
        for layer in layers:
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                raise TypeError(f"ReLUNet takes only Conv2d / Linear layers, got {type(layer).__name__}")
        self.layers = nn.ModuleList(layers)
        self.input_shape = tuple(int(s) for s in input_shape)
        probe = torch.zeros(1, *self.input_shape, dtype=self.layers[0].weight.dtype)
        with torch.no_grad():
            shapes = [tuple(z.shape[1:]) for z in self.preactivations(probe)]
        #: shape (without batch) of every layer's pre-activation, logits last
        self.layer_shapes: list[tuple[int, ...]] = shapes
        self.num_classes = int(shapes[-1][0])

    @property
    def hidden_sizes(self) -> list[int]:
        """Number of hidden units n_l of each hidden layer l = 1..L."""
        return [int(torch.tensor(s).prod()) for s in self.layer_shapes[:-1]]

    @property
    def num_hidden(self) -> int:
        """N, the total number of hidden units (one region hyperplane each)."""
        return sum(self.hidden_sizes)

    @property
    def input_dim(self) -> int:
        return int(torch.tensor(self.input_shape).prod())

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All pre-activations g^(1)(x), ..., g^(L)(x) and the logits f(x), in natural shapes."""
        out = []
        h = x
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.Linear) and h.dim() > 2:
                h = h.flatten(1)
            z = layer(h)
            out.append(z)
            if i < len(self.layers) - 1:
                h = torch.relu(z)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.preactivations(x)[-1]


def cnn_small(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> ReLUNet:
    """The CNN of Wong & Kolter used throughout the paper (Sec. 5.1).

    conv 16 4x4 stride 2 pad 1, ReLU, conv 32 4x4 stride 2 pad 1, ReLU, fc 100, ReLU, fc K.
    """
    c, h, w = input_shape
    h2, w2 = _conv_out(_conv_out(h)), _conv_out(_conv_out(w))
    layers = [
        nn.Conv2d(c, 16, 4, stride=2, padding=1),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.Linear(32 * h2 * w2, 100),
        nn.Linear(100, num_classes),
    ]
    return ReLUNet(layers, input_shape)


def mlp(input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (100,)) -> ReLUNet:
    """A fully connected ReLU network with the given hidden widths."""
    d = int(torch.tensor(list(input_shape)).prod())
    sizes = [d, *widths, num_classes]
    layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    return ReLUNet(layers, input_shape)


def _conv_out(n: int, kernel: int = 4, stride: int = 2, padding: int = 1) -> int:
    return (n + 2 * padding - kernel) // stride + 1
