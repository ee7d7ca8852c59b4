"""Interval bound propagation (IBP): boxes pushed through the layers of eq (1).

Given l <= z_{k-1} <= u, the ReLU maps the box to [relu(l), relu(u)], and the next affine
layer maps a box with centre c and radius r to the box W c + b -/+ |W| r. The first layer is
not handled here: its bounds are exact for every method (see ``linear_bounds``).
"""

from __future__ import annotations

import torch

from mmru.models import ReLUNet
from mmru.verify import affine

Bounds = tuple[torch.Tensor, torch.Tensor]


def relu_box(bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and radius of the box [relu(l), relu(u)] of the activations (halved by a product:
    bit for bit the division, which is slower on the CPU)."""
    lo, hi = torch.relu(bounds[0]), torch.relu(bounds[1])
    return (hi + lo) * 0.5, (hi - lo) * 0.5


def ibp_step(net: ReLUNet, k: int, prev: Bounds) -> Bounds:
    """Bounds on z_k from bounds on z_{k-1} (k >= 1), each [B, n]."""
    mid, rad = relu_box(prev)
    centre = affine.forward(net, k, mid)
    spread = affine.forward(net, k, rad, absolute=True, bias=False)
    return centre - spread, centre + spread


def ibp_linear(net: ReLUNet, k: int, spec: torch.Tensor, prev: Bounds) -> Bounds:
    """Bounds on spec z_k for spec [B, m, n_k], with layer k folded into the spec.

    Folding (bounding (spec W_k) a_{k-1} directly rather than spec applied to the box of z_k)
    is never looser and is how IBP margins are usually computed.
    """
    mid, rad = relu_box(prev)
    rows = affine.transpose(net, k, spec)
    centre = torch.einsum("bmn,bn->bm", rows, mid) + affine.bias_dot(net, k, spec)
    spread = torch.einsum("bmn,bn->bm", rows.abs(), rad)
    return centre - spread, centre + spread
