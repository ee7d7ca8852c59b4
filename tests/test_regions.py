"""Linear-region geometry (eqs 1-3, 14, 15): the fast path against full-row references."""

import math

import pytest
import torch
from torch import nn

from mmru.models import ReLUNet, cnn_small, mlp
from mmru.regions import NORM_FLOOR, RegionDistances, dual_exponent, region_distances, rho, row_norms, split_by_layer
from mmru.regions_reference import identity_rows, jacobian_rows, reference_region_distances, reference_row_norms

INF = math.inf
QS = [1.0, 2.0, INF, 3.0]


def three_conv_net() -> ReLUNet:
    """Three conv layers of different kernels / strides / paddings (non-square too), then two fc layers."""
    layers = [
        nn.Conv2d(2, 4, 3, stride=1, padding=1),
        nn.Conv2d(4, 5, (4, 3), stride=(2, 1), padding=(1, 2)),
        nn.Conv2d(5, 3, 3, stride=2, padding=0),
        nn.Linear(30, 7),
        nn.Linear(7, 6),
        nn.Linear(6, 4),
    ]
    return ReLUNet(layers, (2, 11, 9))


NETS = {
    "cnn_small_mnist": lambda: cnn_small((1, 28, 28), 10),
    "cnn_small_cifar": lambda: cnn_small((3, 32, 32), 10),
    "mlp": lambda: mlp((1, 6, 6), 5, (8, 7)),
    "three_conv": three_conv_net,
    "conv_then_logits": lambda: ReLUNet([nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Linear(48, 4)], (1, 7, 7)),
    "wide_kernel_conv_pair": lambda: ReLUNet(
        [nn.Conv2d(1, 3, 5, stride=3, padding=2), nn.Conv2d(3, 4, 2, stride=1, padding=1), nn.Linear(64, 3)], (1, 9, 9)
    ),
}


def batch(net, n=2, dtype=torch.float64):
    x = torch.rand(n, *net.input_shape, dtype=dtype)
    return x, torch.randint(0, net.num_classes, (n,))


def assert_norms_close(fast, ref, rtol):
    torch.testing.assert_close(fast.preact, ref.preact, rtol=rtol, atol=0)
    torch.testing.assert_close(fast.margins, ref.margins, rtol=rtol, atol=0)
    for q in ref.boundary:
        torch.testing.assert_close(fast.boundary[q], ref.boundary[q], rtol=rtol, atol=0)
        torch.testing.assert_close(fast.decision[q], ref.decision[q], rtol=rtol, atol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.func's own use of torch.jit
@pytest.mark.parametrize("name", sorted(NETS))
def test_fast_row_norms_equal_autograd_jacobians(name):
    torch.manual_seed(0)
    net = NETS[name]().double()
    x, y = batch(net, 1 if name.startswith("cnn_small") else 3)
    fast = row_norms(net, x, y, QS)
    assert fast.boundary[1.0].shape == (len(x), net.num_hidden)
    assert fast.decision[1.0].shape == (len(x), net.num_classes)
    assert_norms_close(fast, reference_row_norms(net, x, y, QS, method="jacobian"), rtol=1e-5)


def test_fast_path_float32_within_1e5_of_float64_reference():
    torch.manual_seed(1)
    net = cnn_small((1, 28, 28), 10)
    x, y = batch(net, 3, torch.float32)
    fast = row_norms(net, x, y, [1.0, 2.0, INF])
    ref = reference_row_norms(net.double(), x.double(), y, [1.0, 2.0, INF], method="identity")
    for q in (1.0, 2.0, INF):
        torch.testing.assert_close(fast.boundary[q].double(), ref.boundary[q], rtol=1e-5, atol=0)
        torch.testing.assert_close(fast.decision[q].double(), ref.decision[q], rtol=1e-5, atol=0)


def test_dual_exponents():
    assert [dual_exponent(p) for p in (1, 2, INF, 3)] == [INF, 2.0, 1.0, 1.5]
    with pytest.raises(ValueError):
        dual_exponent(0.5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_identity_image_reference_equals_jacobian_reference():
    torch.manual_seed(2)
    net = three_conv_net().double()
    x, _ = batch(net)
    for a, b in zip(identity_rows(net, x), jacobian_rows(net, x)):
        torch.testing.assert_close(a, b)


def test_padding_positions_are_not_inputs():
    """A corner unit of the first layer sees only part of its kernel; its row norm is that part's norm."""
    conv = nn.Conv2d(1, 1, 3, stride=1, padding=1)
    net = ReLUNet([conv, nn.Linear(16, 2)], (1, 4, 4)).double()
    x, y = batch(net, 1)
    norms = row_norms(net, x, y, [1.0])
    kernel = conv.weight.detach()[0, 0].double()
    first_layer = split_by_layer(norms.boundary[1.0], net)[0].view(4, 4)
    torch.testing.assert_close(first_layer[0, 0], kernel[1:, 1:].abs().sum())
    torch.testing.assert_close(first_layer[1, 1], kernel.abs().sum())


def test_distances_follow_eqs_14_15_and_share_the_rows():
    torch.manual_seed(3)
    net = three_conv_net().double()
    x, y = batch(net, 4)
    dist = region_distances(net, x, y, [1, 2, INF])
    norms = row_norms(net, x, y, [INF, 2.0, 1.0])
    d2 = dist[2.0]
    assert isinstance(d2, RegionDistances)
    torch.testing.assert_close(d2.boundary, norms.preact.abs() / norms.boundary[2.0])
    logits = net(x)
    for i in range(4):
        assert d2.decision[i, y[i]] == INF
        others = [s for s in range(net.num_classes) if s != y[i]]
        margins = logits[i, y[i]] - logits[i, others]
        torch.testing.assert_close(d2.decision[i, others], margins / norms.decision[2.0][i, others])
    # one call for several p equals separate calls; and the reference API agrees
    torch.testing.assert_close(region_distances(net, x, y, [INF])[INF].boundary, dist[INF].boundary)
    ref = reference_region_distances(net, x, y, [1, 2, INF])
    for p in (1.0, 2.0, INF):
        torch.testing.assert_close(dist[p].boundary, ref[p].boundary)


def test_rho_is_min_of_region_and_decision_distance():
    torch.manual_seed(4)
    net = mlp((1, 5, 5), 3, (6,)).double()
    x, y = batch(net, 5)
    d = region_distances(net, x, y, [1])[1.0]
    expected = torch.minimum(d.boundary.min(1).values, d.decision.abs().min(1).values)
    torch.testing.assert_close(rho(d), expected)
    wrong = net(x).argmax(1) != y
    assert (d.decision.min(1).values[wrong] < 0).all() and (d.decision.min(1).values[~wrong] > 0).all()


GRADCHECK_NETS = {
    "conv_fc": lambda: ReLUNet([nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Linear(18, 3)], (1, 6, 6)),
    "conv_conv_fc_fc": lambda: ReLUNet(
        [nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 2, stride=1, padding=1), nn.Linear(32, 3),
         nn.Linear(3, 3)],
        (1, 6, 6),
    ),
    "three_conv": lambda: ReLUNet(
        [nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 2, stride=1, padding=1),
         nn.Conv2d(2, 2, 2, stride=2, padding=1), nn.Linear(18, 3), nn.Linear(3, 3)],
        (1, 6, 6),
    ),
    "mlp": lambda: mlp((1, 3, 3), 3, (4, 3)),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_NETS))
def test_gradcheck_in_the_parameters(name):
    torch.manual_seed(5)
    net = GRADCHECK_NETS[name]().double()
    x, y = batch(net, 2)
    wrapper = _DistanceModule(net)
    names = [n for n, _ in wrapper.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in wrapper.parameters())

    def distances_of(*values):
        return torch.func.functional_call(wrapper, dict(zip(names, values)), (x, y))

    assert torch.autograd.gradcheck(distances_of, params, eps=1e-6, atol=1e-5, fast_mode=True)


class _DistanceModule(nn.Module):
    """Wraps a net so that functional_call can swap its parameters for gradcheck."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, y):
        out = []
        for d in region_distances(self.net, x, y, [1, 2, INF]).values():
            out += [d.boundary.flatten(), d.decision[torch.isfinite(d.decision)]]
        return torch.cat(out)


def test_parameter_gradients_equal_the_reference_on_cnn_small():
    torch.manual_seed(7)
    net = cnn_small((1, 28, 28), 10).double()
    x, y = batch(net, 1)

    def grads(distances_fn):
        net.zero_grad()
        total = 0
        for d in distances_fn(net, x, y, [1, INF]).values():
            weights = torch.rand_like(d.boundary, generator=torch.Generator().manual_seed(0))
            total = total + (weights * d.boundary).sum() + d.decision[torch.isfinite(d.decision)].sum()
        total.backward()
        return [p.grad.clone() for p in net.parameters()]

    for fast, ref in zip(grads(region_distances), grads(reference_region_distances)):
        torch.testing.assert_close(fast, ref, rtol=1e-7, atol=1e-9)


def test_dead_units_give_floored_norms_and_finite_gradients():
    torch.manual_seed(6)
    net = cnn_small((1, 12, 12), 4)
    with torch.no_grad():
        net.layers[1].bias.fill_(-1e3)  # every unit of the second conv layer is dead
    x, y = batch(net, 3, torch.float32)
    norms = row_norms(net, x, y, [1.0, INF])
    dense = split_by_layer(norms.boundary[INF], net)[2]
    assert torch.all(dense == NORM_FLOOR)  # nothing reaches the dense layer
    dist = region_distances(net, x, y, [1, INF])
    loss = sum(d.boundary.mean() + d.decision[torch.isfinite(d.decision)].mean() for d in dist.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_unsupported_conv_is_refused():
    net = ReLUNet([nn.Conv2d(1, 2, 3, dilation=2), nn.Linear(2 * 2 * 2, 2)], (1, 6, 6))
    with pytest.raises(ValueError, match="dilation"):
        row_norms(net, torch.rand(1, 1, 6, 6), torch.tensor([0]), [1.0])
