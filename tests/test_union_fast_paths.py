"""The training bounds' fast paths against the plain maps they replace (issue 17 §4): the first
layer's space-to-depth conv, its sub-pixel transpose and the channels-last maps of every layer (forward
and transpose) against ``mmru.verify.affine``, values and weight gradients, on the conv shapes the
nets use and on awkward ones; the hand-written backward of one CROWN layer against autograd of the
same arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmru.models import ReLUNet
from mmru.regularizers import channels_last
from mmru.regularizers.first_layer import FirstLayer
from mmru.regularizers.union_bounds import _RelaxedCoefficients
from mmru.verify import affine

#: (channels, kernel, stride, padding, height, width): cnn_small on MNIST and on 7x7 (its windows
#: drop a row), odd kernels, unequal strides and paddings, a stride above the kernel's half, RGB
CONVS = [
    (1, 4, 2, 1, 28, 28),
    (1, 4, 2, 1, 7, 7),
    (1, 3, 2, 1, 6, 6),
    (1, 5, 3, 2, 11, 10),
    (1, 3, (2, 1), (1, 0), 7, 9),
    (1, 2, 1, 0, 5, 5),
    (3, 4, 2, 1, 8, 8),
]


def _net(c: int, k: int, s, p, h: int, w: int, seed: int = 0) -> ReLUNet:
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, 5, k, stride=s, padding=p)
    with torch.no_grad():
        out = conv(torch.zeros(1, c, h, w))
    return ReLUNet([conv, nn.Linear(out[0].numel(), 3)], (c, h, w)).double()


def _chw(net: ReLUNet, k: int, t: torch.Tensor) -> torch.Tensor:
    """channels_last's order on layer k's output (k = -1: the input, which it keeps as C, H, W) -> C, H, W."""
    shape = net.layer_shapes[k] if k >= 0 else ()
    if len(shape) != 3:
        return t
    c, h, w = shape
    return t.reshape(*t.shape[:-1], h, w, c).movedim(-1, -3).reshape(t.shape)


def _hwc(net: ReLUNet, k: int, t: torch.Tensor) -> torch.Tensor:
    """C, H, W order on layer k's output (k = -1: the input, kept) -> channels_last's order."""
    shape = net.layer_shapes[k] if k >= 0 else ()
    if len(shape) != 3:
        return t
    return t.reshape(*t.shape[:-1], *shape).movedim(-3, -1).reshape(t.shape)


@pytest.mark.parametrize("shape", CONVS)
@pytest.mark.parametrize("absolute, bias", [(False, True), (True, False)])
def test_first_layer_by_phases_is_the_layer(shape, absolute, bias):
    net = _net(*shape)
    v = torch.rand(4, affine.input_size(net, 0), dtype=torch.float64)
    fast = _chw(net, 0, FirstLayer(net)(v, absolute=absolute, bias=bias))
    torch.testing.assert_close(fast, affine.forward(net, 0, v, absolute=absolute, bias=bias), rtol=0, atol=1e-12)
    weight = net.layers[0].weight
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), weight)
    (grad_ref,) = torch.autograd.grad(affine.forward(net, 0, v, absolute=absolute, bias=bias).square().sum(), weight)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=0, atol=1e-10)


def _stacked(seed: int = 0) -> ReLUNet:
    """Two convs and two dense layers on 1x10x10: every kind of step the back-substitution takes."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1),
              nn.Linear(6 * 3 * 3, 7), nn.Linear(7, 3)]
    return ReLUNet(layers, (1, 10, 10)).double()


NETS = {"stacked": _stacked, "rgb_first": lambda: _net(3, 4, 2, 1, 8, 8),
        **{f"first_{i}": (lambda shape=shape: _net(*shape)) for i, shape in enumerate(CONVS)}}


@pytest.mark.parametrize("name", NETS)
def test_channels_last_transposes_are_the_layers_transposes(name):
    net = NETS[name]()
    for k in range(len(net.layers)):
        lam = torch.randn(2, 3, affine.layer_size(net, k), dtype=torch.float64)
        ref = affine.transpose(net, k, lam)
        hwc = _hwc(net, k, lam).requires_grad_()
        fast = channels_last.transpose(net, k, hwc)
        torch.testing.assert_close(_chw(net, k - 1, fast), ref, rtol=0, atol=1e-12)
        bias = channels_last.bias_vector(net, k)
        torch.testing.assert_close(hwc @ bias, affine.bias_dot(net, k, lam), rtol=0, atol=1e-12)
        weight = net.layers[k].weight
        (grad_fast,) = torch.autograd.grad(_chw(net, k - 1, fast).square().sum(), weight)
        (grad_ref,) = torch.autograd.grad(ref.square().sum(), weight)
        torch.testing.assert_close(grad_fast, grad_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["stacked", "rgb_first", "first_0"])
@pytest.mark.parametrize("absolute, bias", [(False, True), (True, False)])
def test_channels_last_forwards_are_the_layers(name, absolute, bias):
    net = NETS[name]()
    for k in range(1, len(net.layers)):
        v = torch.randn(4, affine.input_size(net, k), dtype=torch.float64)
        ref = affine.forward(net, k, v, absolute=absolute, bias=bias)
        fast = _chw(net, k, channels_last.forward(net, k, _hwc(net, k - 1, v), absolute=absolute, bias=bias))
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
        weight = net.layers[k].weight
        (grad_fast,) = torch.autograd.grad(fast.square().sum(), weight)
        (grad_ref,) = torch.autograd.grad(ref.square().sum(), weight)
        torch.testing.assert_close(grad_fast, grad_ref, rtol=0, atol=1e-10)


def test_a_dense_first_layer_takes_the_plain_maps():
    torch.manual_seed(0)
    net = ReLUNet([nn.Linear(6, 4), nn.Linear(4, 2)], (6,)).double()
    v, lam = torch.rand(3, 6, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    assert torch.equal(FirstLayer(net)(v), affine.forward(net, 0, v))
    assert torch.equal(channels_last.transpose(net, 0, lam), affine.transpose(net, 0, lam))


def test_a_dilated_or_grouped_conv_takes_the_plain_maps_in_channels_last_order():
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2), nn.Conv2d(4, 4, 3, padding=1, groups=2),
              nn.Linear(4 * 3 * 3, 3)]
    net = ReLUNet(layers, (2, 7, 7)).double()
    v = torch.rand(3, affine.input_size(net, 0), dtype=torch.float64)
    assert not FirstLayer(net).by_phases
    torch.testing.assert_close(_chw(net, 0, FirstLayer(net)(v)), affine.forward(net, 0, v), rtol=0, atol=1e-12)
    hidden = torch.randn(3, affine.input_size(net, 1), dtype=torch.float64)
    torch.testing.assert_close(_chw(net, 1, channels_last.forward(net, 1, _hwc(net, 0, hidden))),
                               affine.forward(net, 1, hidden), rtol=0, atol=1e-12)
    for k in range(2):
        lam = torch.randn(3, 2, affine.layer_size(net, k), dtype=torch.float64)
        torch.testing.assert_close(_chw(net, k - 1, channels_last.transpose(net, k, _hwc(net, k, lam))),
                                   affine.transpose(net, k, lam), rtol=0, atol=1e-12)


def _split_products(lam, slope, alpha, intercept):
    """The CROWN layer as autograd would compute it from the split of lam into its signs."""
    pos = torch.relu(lam)
    neg = lam - pos
    return neg * slope.unsqueeze(1) + pos * alpha.unsqueeze(1), (neg * intercept.unsqueeze(1)).sum(-1)


def _relaxation_inputs(seed: int, zeros: bool = True):
    gen = torch.Generator().manual_seed(seed)
    lam = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    if zeros:  # exact zeros: the sign split's boundary, where autograd's convention must be kept
        lam[0, 0, :3] = 0.0
    slope = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    alpha = (torch.rand(3, 7, generator=gen) > 0.5).double()
    intercept = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    return [t.requires_grad_() for t in (lam, slope, alpha, intercept)]


@pytest.mark.parametrize("seed", range(3))
def test_the_crown_layer_matches_the_split_products(seed):
    inputs = _relaxation_inputs(seed)
    out, const = _RelaxedCoefficients.apply(*inputs)
    ref_out, ref_const = _split_products(*inputs)
    assert torch.equal(out, ref_out)  # the same products, entry by entry
    torch.testing.assert_close(const, ref_const, rtol=0, atol=1e-14)
    gen = torch.Generator().manual_seed(seed + 10)
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float64), torch.randn(const.shape, generator=gen,
                                                                                       dtype=torch.float64)
    mine = torch.autograd.grad((out * weights[0]).sum() + (const * weights[1]).sum(), inputs)
    theirs = torch.autograd.grad((ref_out * weights[0]).sum() + (ref_const * weights[1]).sum(), inputs)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_the_crown_layer_passes_gradcheck():
    # finite differences need lam away from the kink at 0
    assert torch.autograd.gradcheck(_RelaxedCoefficients.apply, tuple(_relaxation_inputs(5, zeros=False)))
