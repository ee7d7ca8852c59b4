"""Bound propagation (IBP, KW, CROWN) over l_p balls: soundness against sampled points,
the orderings theory guarantees, the patch fast path against dense rows, and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmru.models import ReLUNet, cnn_small, mlp
from mmru.verify import LpBall, certify, layer_bounds, margin_lower_bounds, patches
from mmru.verify.bounds import METHODS
from tiny_nets import through_the_box

INF = math.inf
PS = [1.0, 2.0, 3.0, INF]


pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_net() -> ReLUNet:
    """Two convs (one without bias, one unpadded) and a linear layer on 1x6x6 inputs."""
    layers = [nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=False), nn.Conv2d(3, 4, 2), nn.Linear(16, 3)]
    return ReLUNet(layers, (1, 6, 6))


def _nets() -> dict[str, ReLUNet]:
    torch.manual_seed(0)
    return {
        "mlp": through_the_box(mlp((5,), 3, (8, 8)).double(), 0),
        "conv": through_the_box(_conv_net().double(), 1),
        # cnn_small's layers on 7x7: its windows overhang the border and drop a row
        "cnn_small_7x7": through_the_box(cnn_small((1, 7, 7), 3).double(), 2),
    }


NETS = _nets()


def _sample_ball(x: torch.Tensor, eps: float, p: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points per centre in the l_p ball ∩ [0, 1]^d: random directions scaled to the sphere
    and inside, plus the ball's vertices for p = 1 and p = inf. Returns [n, B, d]."""
    flat = x.flatten(1)
    d = flat.shape[1]
    u = torch.randn(n, *flat.shape, generator=gen, dtype=flat.dtype)
    if p == INF:
        u = torch.where(torch.rand(u.shape, generator=gen, dtype=u.dtype) < 0.5, u.sign(), u.clamp(-1, 1))
    else:
        u = u / torch.linalg.vector_norm(u, ord=p, dim=-1, keepdim=True)
        u = u * torch.rand(n, flat.shape[0], 1, generator=gen, dtype=u.dtype).sqrt()
        if p == 1.0:  # vertices +-e_i
            idx = torch.randint(d, (n // 2, flat.shape[0]), generator=gen)
            sign = torch.randint(2, (n // 2, flat.shape[0]), generator=gen).to(u.dtype) * 2 - 1
            u[: n // 2] = torch.nn.functional.one_hot(idx, d).to(u.dtype) * sign.unsqueeze(-1)
    # Clipping to the box never moves a point further from a centre inside the box.
    return (flat + eps * u).clamp(0.0, 1.0)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("p", PS)
def test_bounds_contain_sampled_points(name, p):
    net = NETS[name]
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, *net.input_shape, generator=gen, dtype=torch.float64)
    eps = {1.0: 0.5, 2.0: 0.3, 3.0: 0.2, INF: 0.1}[p]
    points = _sample_ball(x, eps, p, 400, gen)
    with torch.no_grad():
        acts = net.preactivations(points.reshape(-1, *net.input_shape))
        for method in METHODS:
            for z, (lo, hi) in zip(acts, layer_bounds(net, x, eps, p, method)):
                z = z.reshape(400, 3, -1)
                assert (z >= lo - 1e-9).all() and (z <= hi + 1e-9).all(), method
            margins = margin_lower_bounds(net, x, torch.tensor([0, 1, 2]), eps, p, method)
            logits = acts[-1].reshape(400, 3, -1)
            true = logits.gather(2, torch.tensor([0, 1, 2]).view(1, 3, 1).expand(400, 3, 1)) - logits
            assert (true >= margins - 1e-9).all(), method


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_crown_never_looser_than_kw(name, p):
    net = NETS[name]
    x = torch.rand(4, *net.input_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        for eps in (0.05, 0.3):
            kw, crown = layer_bounds(net, x, eps, p, "kw"), layer_bounds(net, x, eps, p, "crown")
            for (kl, ku), (cl, cu) in zip(kw, crown):
                assert (cl >= kl).all() and (cu <= ku).all()
            crown = margin_lower_bounds(net, x, y, eps, p, "crown")
            assert (crown >= margin_lower_bounds(net, x, y, eps, p, "kw")).all()


@pytest.mark.parametrize("p", PS)
def test_first_layer_is_exact_and_all_methods_agree_there(p):
    """Without the box, z_1 over the ball is W x + b -/+ eps ||W_j||_q, for every method."""
    net = NETS["mlp"]
    x = torch.rand(2, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q = 1.0 if p == INF else INF if p == 1.0 else p / (p - 1)
    w, b = net.layers[0].weight, net.layers[0].bias
    radius = 0.2 * torch.linalg.vector_norm(w, ord=q, dim=1)
    with torch.no_grad():
        for method in METHODS:
            lo, hi = layer_bounds(net, x, 0.2, p, method, box=None)[0]
            torch.testing.assert_close(lo, x @ w.T + b - radius)
            torch.testing.assert_close(hi, x @ w.T + b + radius)


def test_ball_and_box_bound_is_sound_and_exact_for_linf():
    """<lam, x'> over the ball ∩ box, against the exact optimum by enumeration in 2-D."""
    gen = torch.Generator().manual_seed(4)
    x = torch.tensor([[0.05, 0.7], [0.5, 0.5], [0.95, 0.1]], dtype=torch.float64)
    lam = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    angles = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
    circle = torch.stack([angles.cos(), angles.sin()], -1)
    for p in (1.0, 2.0, INF):
        eps = 0.3
        ball = LpBall(x, eps, p)
        lo, hi = ball.linear_bounds(lam)
        # A linear function's extremes over the set lie on its boundary: the sphere, clipped.
        sphere = circle / torch.linalg.vector_norm(circle, ord=p, dim=-1, keepdim=True)
        pts = (x.unsqueeze(1) + eps * sphere).clamp(0, 1)  # [B, n, 2]
        vals = torch.einsum("md,bnd->bmn", lam, pts)
        assert (lo <= vals.amin(-1) + 1e-12).all() and (hi >= vals.amax(-1) - 1e-12).all()
        if p == INF:
            torch.testing.assert_close(lo, vals.amin(-1))
            torch.testing.assert_close(hi, vals.amax(-1))


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
@pytest.mark.parametrize("method", METHODS)
def test_patch_path_matches_dense_rows(p, method, monkeypatch):
    """The receptive-field fast path against plain dense back-substitution."""
    x = torch.rand(3, 1, 7, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eps = torch.tensor([0.02, 0.1, 0.3], dtype=torch.float64)  # per-example radii
    y = torch.tensor([0, 1, 2])
    for name in ("conv", "cnn_small_7x7"):
        net = NETS[name]
        xin = x[:, :, :6, :6] if name == "conv" else x
        with torch.no_grad():
            fast = layer_bounds(net, xin, eps, p, method)
            fast_margins = margin_lower_bounds(net, xin, y, eps, p, method)
            monkeypatch.setattr(patches, "applies", lambda net, k: False)
            slow = layer_bounds(net, xin, eps, p, method)
            slow_margins = margin_lower_bounds(net, xin, y, eps, p, method)
            monkeypatch.undo()
        for (fl, fu), (sl, su) in zip(fast, slow):
            torch.testing.assert_close(fl, sl)
            torch.testing.assert_close(fu, su)
        torch.testing.assert_close(fast_margins, slow_margins)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2_certificates_survive_a_dense_search(seed):
    """2-D inputs: no point of a fine grid in a certified l2 ball ∩ box is misclassified."""
    net = through_the_box(mlp((2,), 3, (12, 12)).double(), seed)
    x = torch.rand(8, 2, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
        g = torch.linspace(-1, 1, 121, dtype=torch.float64)
        grid = torch.cartesian_prod(g, g)
        grid = grid[grid.norm(dim=1) <= 1]
        checked = 0
        for eps in (0.02, 0.05, 0.1, 0.2):
            for method in ("kw", "crown"):
                for i in certify(net, x, y, eps, 2.0, method).nonzero().flatten():
                    pts = (x[i] + eps * grid).clamp(0, 1)
                    assert (net(pts).argmax(1) == y[i]).all()
                    checked += 1
        assert checked > 0


def test_certify_needs_positive_margins_and_correct_class():
    net = NETS["mlp"]
    x = torch.rand(64, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        pred = net(x).argmax(1)
        wrong = (pred + 1) % 3
        for method in METHODS:
            assert not certify(net, x, wrong, 0.0, INF, method).any()
            assert certify(net, x, pred, 0.0, INF, method).all()  # eps = 0: the margins at x
            margins = margin_lower_bounds(net, x, pred, 0.01, 2.0, method)
            assert (margins.gather(1, pred.unsqueeze(1)) == 0).all()
            others = margins.scatter(1, pred.unsqueeze(1), INF)
            torch.testing.assert_close(certify(net, x, pred, 0.01, 2.0, method), (others > 0).all(1))


@pytest.mark.parametrize("method", METHODS)
def test_margins_are_differentiable_in_the_parameters(method):
    """Robust training (Wong & Kolter) back-propagates through the bounds, patch path included."""
    torch.manual_seed(7)
    net = cnn_small((1, 8, 8), 3)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    for p in (1.0, 2.0, INF):
        net.zero_grad()
        loss = nn.functional.cross_entropy(-margin_lower_bounds(net, x, y, 0.1, p, method), y)
        loss.backward()
        grads = [q.grad for q in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
