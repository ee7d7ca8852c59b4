"""Linear-region geometry (eqs 1-3, 14, 15): the fast path against full-row references."""

import math

import pytest
import torch
from torch import nn

from mmru.models import ReLUNet, cnn_small, mlp
from mmru.regions import NORM_FLOOR, dual_exponent, region_distances, rho, row_norms, split_by_layer
from mmru.regions_reference import identity_rows, jacobian_rows, reference_region_distances, reference_row_norms
from tiny_nets import through_the_box

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
    # cnn_small's geometry on 3 channels; 32x32 only made it 5x slower (the grid of
    # test_region_geometries covers the other geometries)
    "cnn_small_3x16x16": lambda: cnn_small((3, 16, 16), 10),
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


# --- rho (eq 3) against a brute force that never looks at a row: tiny nets on 2-D inputs -----------
#
# S = {z : z has x's activation pattern and x's label} is a polytope (within Q(x) every unit and
# logit is affine), so a ray from x leaves it once and for all, and its l_p distance to the
# complement of S, min over l_p-unit directions u of the exit time t(u), is exactly
# rho_p = min(d^B_p, |d^D_p|) for a correctly classified x. The exit times come from bisection on
# forward passes alone. For p = 1 and inf the minimising directions are axes / diagonals, which the
# angle grid contains; for p = 2, 3 the grid's step 2 pi / 1440 leaves a relative error below 1e-5.

# (net, seed of through_the_box): seeds where no point has a unit whose row and pre-activation are
# both 0 (all units below dead, zero bias: rho = 0, a sound but degenerate radius) and, for the convs,
# where a unit cut by the padding is the closest boundary of some points
TWO_D_NETS = {
    "mlp": (lambda: mlp((2,), 3, (6, 5)), 11),
    # 1x2 image, padding 1 along the width: the outer units see one pixel and one kernel entry only
    "padded_convs": (
        lambda: ReLUNet(
            [nn.Conv2d(1, 3, (1, 2), padding=(0, 1)), nn.Conv2d(3, 2, (1, 2), stride=(1, 2), padding=(0, 1)),
             nn.Linear(4, 4), nn.Linear(4, 3)],
            (1, 1, 2),
        ),
        12,
    ),
}


def exit_radii(net, x, ps, n_angles=1440, steps=42):
    """[B, len(ps)] brackets lo, hi of min over l_p-unit directions u of the exit time from S along
    x + t u, and [B, len(ps), 2] the points just outside S on the minimising rays."""
    with torch.no_grad():
        return _exit_radii(net, x, ps, n_angles, steps)


def _exit_radii(net, x, ps, n_angles, steps):
    angles = torch.arange(n_angles, dtype=torch.float64) * (2 * math.pi / n_angles)
    u = torch.stack([angles.cos(), angles.sin()], dim=1)
    u = torch.stack([u / torch.linalg.vector_norm(u, p, dim=1, keepdim=True) for p in ps])  # [P, A, 2]
    shape = (len(x), len(ps), n_angles)
    pattern = [(z > 0)[:, None, None].expand(*shape, *z.shape[1:]) for z in net.preactivations(x)[:-1]]
    label = net(x).argmax(1)[:, None, None].expand(shape)

    def inside(t):
        points = x.flatten(1)[:, None, None] + t[..., None] * u
        zs = [z.view(*shape, *z.shape[1:]) for z in net.preactivations(points.view(-1, *net.input_shape))]
        same = torch.stack([((z > 0) == m).flatten(3).all(3) for z, m in zip(zs[:-1], pattern)]).all(0)
        return same & (zs[-1].argmax(-1) == label)

    lo, hi = torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)
    for _ in range(12):  # grow hi until every ray has left S (S may be unbounded along some rays)
        still = inside(hi)
        if not still.any():
            break
        lo, hi = torch.where(still, hi, lo), torch.where(still, 2 * hi, hi)
    unbounded = inside(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        still = inside(mid)
        lo, hi = torch.where(still, mid, lo), torch.where(still, hi, mid)
    hi = hi.masked_fill(unbounded, INF)
    best_hi, best = hi.min(2)  # [B, P]
    outside = x.flatten(1)[:, None] + best_hi[..., None] * u[torch.arange(len(ps)), best]
    return lo.masked_fill(unbounded, INF).amin(2), best_hi, outside


@pytest.mark.parametrize("name", sorted(TWO_D_NETS))
def test_rho_is_the_distance_to_the_complement_of_the_region_found_by_brute_force(name, one_thread):
    build, seed = TWO_D_NETS[name]
    net = through_the_box(build().double(), seed)
    x = torch.rand(5, *net.input_shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    y = net(x).argmax(1)  # Theorem 2.1 certifies correctly classified points
    ps, rtols = (1.0, INF, 2.0, 3.0), torch.tensor([1e-9, 1e-9, 3e-5, 3e-5], dtype=torch.float64)
    dist = region_distances(net, x, y, ps)
    radii = torch.stack([rho(dist[p]) for p in ps], dim=1)
    # not vacuous: some radii are set by a region boundary, some by the decision boundary
    by_decision = torch.stack([dist[p].decision.abs().min(1).values < dist[p].boundary.min(1).values for p in ps])
    assert by_decision.any() and not by_decision.all()
    lo, hi, outside = exit_radii(net, x, ps)
    assert torch.isfinite(hi).all()
    assert (radii <= hi * (1 + 1e-12)).all(), (radii, hi)  # never beyond the region
    assert (lo <= radii * (1 + rtols)).all(), (radii, lo)  # and no smaller than it
    # the exact case of Theorem 2.1: where |d^D| < d^B, the ray leaves S through the decision
    # boundary, so a misclassified point lies just beyond rho
    labels = net(outside.reshape(-1, *net.input_shape)).argmax(1).view(len(x), len(ps))
    assert torch.equal(labels != y[:, None], by_decision.t())


def test_signed_decision_distance_is_negative_exactly_at_misclassified_points():
    torch.manual_seed(4)
    net = mlp((1, 5, 5), 3, (6,)).double()
    x, y = batch(net, 5)
    d = region_distances(net, x, y, [1])[1.0]
    wrong = net(x).argmax(1) != y
    assert wrong.any() and (~wrong).any()
    assert (d.decision.min(1).values[wrong] < 0).all() and (d.decision.min(1).values[~wrong] > 0).all()
    assert torch.isinf(d.decision[torch.arange(5), y]).all()


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
    net = cnn_small((1, 16, 16), 10).double()  # the windows overlap as on 28x28, at a third of the cost
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
