"""The fast region engine on any conv geometry: d^B_p, d^D_p (eqs 14, 15) and their parameter
gradients against autograd Jacobian rows with the dual norms written out by hand (issue 8, item 6).

The oracle shares nothing with :mod:`mmru.regions` but the ``NORM_FLOOR`` constant: rows come from
``torch.func.jacfwd`` of the pre-activations, norms from explicit sums and maxima, and the gradients
from plain autograd through the identity-image rows.
"""

import math

import pytest
import torch
from torch import nn

from mmru.models import ReLUNet
from mmru.regions import NORM_FLOOR, region_distances
from mmru.regions_reference import identity_rows, jacobian_rows

INF = math.inf
PS = (1.0, 2.0, INF, 3.0)

# (input shape, conv layers as (out channels, kernel, stride, padding, bias), hidden Linear widths, classes).
# Every value of every axis appears (checked by test_the_grid_covers_every_axis), not every combination.
GEOMETRIES = {
    "pad0_first_conv_to_logits": ((1, 9, 11), [(3, 3, 1, 0, True)], [], 4),
    "pad0_one_channel": ((1, 9, 11), [(1, 2, 2, 0, True)], [6], 3),
    "pad0_then_pad1": ((3, 12, 10), [(2, 2, 2, 0, False), (3, 3, 1, 1, True)], [5], 3),
    "stride3_pad2_three_convs": ((1, 9, 11), [(2, 5, 3, 2, True), (2, 2, 1, 0, True), (3, 3, 2, 1, True)], [], 3),
    "four_convs": (
        (1, 12, 11),
        [(2, 3, 1, 0, True), (2, 4, 1, 2, False), (2, 2, 2, 1, True), (2, 3, 3, 2, True)],
        [4],
        3,
    ),
    "non_square_kernels_strides_pads": (
        (3, 12, 10),
        [(2, (2, 5), (3, 1), (0, 2), True), (3, (3, 2), (1, 2), (2, 1), True)],
        [],
        3,
    ),
    "anisotropic_three_convs": (
        (2, 12, 11),
        [(2, (3, 2), (1, 2), (1, 0), True), (2, (2, 4), (2, 1), (0, 2), True), (2, (3, 2), (2, 1), (2, 1), True)],
        [],
        3,
    ),
    "kernel4_no_bias_then_kernel5": ((1, 9, 11), [(3, 4, 2, 1, False), (2, 5, 1, 2, True)], [3], 3),
    "padding_wider_than_kernel": ((1, 7, 8), [(2, 2, 3, 2, True), (2, 3, 2, 0, True)], [], 3),
    "stride3_pad0_three_convs": ((3, 12, 10), [(2, 4, 3, 0, True), (2, 2, 2, 2, True), (2, 2, 1, 0, False)], [3], 3),
    "stride3_kernel5_pad0": ((2, 11, 9), [(2, 5, 3, 0, True), (2, 3, 1, 1, True)], [4, 3], 3),
    "linear_only": ((1, 3, 5), [], [6, 4], 3),
    "linear_only_no_bias": ((2, 3, 2), [], [5], 4),
}


def build(name: str) -> ReLUNet:
    shape, convs, widths, classes = GEOMETRIES[name]
    layers, channels = [], shape[0]
    for out, kernel, stride, padding, bias in convs:
        layers.append(nn.Conv2d(channels, out, kernel, stride=stride, padding=padding, bias=bias))
        channels = out
    with torch.no_grad():
        h = torch.zeros(1, *shape)
        for conv in layers:
            h = conv(h)
    sizes = [h[0].numel(), *widths, classes]
    layers += [nn.Linear(a, b, bias=not name.endswith("no_bias")) for a, b in zip(sizes[:-1], sizes[1:])]
    return ReLUNet(layers, shape)


def dual_norm(rows: torch.Tensor, p: float) -> torch.Tensor:
    """||rows||_q along dim 1, q dual to p, written out for each p."""
    a = rows.abs()
    if p == 1.0:
        return a.amax(1).clamp_min(NORM_FLOOR)
    if p == INF:
        return a.sum(1).clamp_min(NORM_FLOOR)
    # floor before the root: the same value, and no 0 * inf gradient at a zero row
    if p == 2.0:
        return a.pow(2).sum(1).clamp_min(NORM_FLOOR**2).sqrt()
    assert p == 3.0
    return a.pow(1.5).sum(1).clamp_min(NORM_FLOOR**1.5).pow(2.0 / 3.0)


def oracle(net: ReLUNet, x, y, rows_of) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """p -> (d^B [B, N], d^D [B, K] with +inf at the label) from full rows [B, d, n] per layer."""
    *hidden, logit_rows = rows_of(net, x)
    rows = torch.cat(hidden, dim=2)
    zs = net.preactivations(x)
    preact = torch.cat([z.flatten(1) for z in zs[:-1]], dim=1)
    logits = zs[-1]
    out = {}
    for p in PS:
        boundary = preact.abs() / dual_norm(rows, p)
        decision = torch.full_like(logits, INF)
        for b in range(len(x)):
            for s in range(net.num_classes):
                if s != y[b]:
                    row = (logit_rows[b, :, y[b]] - logit_rows[b, :, s])[None, :]
                    decision[b, s] = (logits[b, y[b]] - logits[b, s]) / dual_norm(row, p)[0]
        out[p] = boundary, decision
    return out


def points(net, seed, n=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.input_shape, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, net.num_classes, (n,), generator=gen)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.func's own use of torch.jit
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_distances_equal_autograd_jacobian_oracle(name, one_thread):
    torch.manual_seed(0)
    net = build(name).double()
    x, y = points(net, 1)
    fast = region_distances(net, x, y, PS)
    expected = oracle(net, x, y, jacobian_rows)
    for p in PS:
        boundary, decision = expected[p]
        assert fast[p].boundary.shape == (len(x), net.num_hidden)
        torch.testing.assert_close(fast[p].boundary, boundary, rtol=1e-10, atol=0)
        torch.testing.assert_close(fast[p].decision, decision, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_parameter_gradients_equal_plain_autograd(name, one_thread):
    torch.manual_seed(0)
    net = build(name).double()
    x, y = points(net, 2)
    gen = torch.Generator().manual_seed(3)

    def grads(distances):
        net.zero_grad()
        total = 0
        for p in PS:
            boundary, decision = distances[p]
            finite = torch.isfinite(decision)
            total = total + (torch.rand(boundary.shape, generator=gen, dtype=boundary.dtype) * boundary).sum()
            total = total + decision[finite].sum()
        total.backward()
        return [param.grad.clone() for param in net.parameters()]

    fast = grads({p: (d.boundary, d.decision) for p, d in region_distances(net, x, y, PS).items()})
    gen.manual_seed(3)
    expected = grads(oracle(net, x, y, identity_rows))
    for g, e in zip(fast, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_the_grid_covers_every_axis():
    """The grid above is not a cartesian product; this keeps every value of every axis in it."""
    seen = {"padding": set(), "stride": set(), "kernel": set(), "bias": set(), "n_conv": set(), "square": set()}
    for shape, convs, _, _ in GEOMETRIES.values():
        seen["n_conv"].add(len(convs))
        seen["square"].add(shape[1] == shape[2])
        for _, kernel, stride, padding, bias in convs:
            for key, value in (("padding", padding), ("stride", stride), ("kernel", kernel)):
                seen[key].update(value if isinstance(value, tuple) else (value,))
            seen["bias"].add(bias)
    assert seen["padding"] >= {0, 1, 2} and seen["stride"] >= {1, 2, 3} and seen["kernel"] >= {2, 3, 4, 5}
    assert seen["bias"] == {True, False} and seen["n_conv"] >= {0, 1, 2, 3, 4} and False in seen["square"]


def test_conv_logits_are_refused_in_one_sentence():
    net = ReLUNet([nn.Conv2d(1, 2, 3), nn.Conv2d(2, 3, 3)], (1, 5, 5))
    with pytest.raises(ValueError, match="the last one Linear"):
        region_distances(net, torch.rand(1, 1, 5, 5), torch.tensor([0]), [1.0])
