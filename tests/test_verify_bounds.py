"""Bound propagation (IBP, KW, CROWN) over l_p balls: soundness against exact extremes (MIP)
and sampled points, CROWN's own pass and its intersection with KW, certificates against exact
margins, the patch fast path against dense rows, chunking, and gradients."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from mmru.models import ReLUNet, cnn_small, mlp
from mmru.verify import LpBall, certify, layer_bounds, linear_bounds, margin_lower_bounds, patches
from mmru.verify.bounds import METHODS
from exact_oracle import ExactProgram
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


def _chain() -> ReLUNet:
    """3 inputs, one ReLU, one ReLU, 3 classes; both units unstable on the test balls."""
    net = mlp((3,), 3, (1, 1)).double()
    values = [([[1.0, -0.7, 0.4]], [-0.3]), ([[-1.3]], [0.2]), ([[1.0], [-0.8], [0.5]], [0.0, 0.1, -0.05])]
    with torch.no_grad():
        for layer, (w, b) in zip(net.layers, values):
            layer.weight.copy_(torch.tensor(w))
            layer.bias.copy_(torch.tensor(b))
    return net


def _exact_nets() -> dict[str, ReLUNet]:
    """Tiny MLPs for the exact oracle; the width-1 chain makes one side of each deeper unit's
    KW / CROWN bound exact (the upper ReLU line meets relu at u), so a relaxation off by 1%
    crosses the exact value."""
    return {
        "mlp": through_the_box(mlp((4,), 3, (4, 3)).double(), 10),
        "chain": _chain(),
        "narrow": through_the_box(mlp((3,), 2, (2, 2)).double(), 12),
    }


EXACT_NETS = _exact_nets()
EXACT_CASES = {1.0: (0.4, 1.0), INF: (0.1, 0.3)}  # p -> radii
TOL = 1e-5  # the MIP's optimum is exact up to HiGHS's feasibility tolerances (1e-6 scaled)


def _methods(net, x, eps, p):
    """Every pass, CROWN on its own ("crown_raw") and intersected with KW ("crown")."""
    out = {m: layer_bounds(net, x, eps, p, m) for m in ("ibp", "kw")}
    out["crown_raw"] = layer_bounds(net, x, eps, p, "crown", intersect=False)
    out["crown"] = layer_bounds(net, x, eps, p, "crown")
    return out


@pytest.mark.parametrize("p", [1.0, INF])
def test_bounds_against_exact_extremes(p):
    """IBP, KW, CROWN's own pass and CROWN ∩ KW, unit by unit, against exact minima and maxima
    (mixed-integer programs). Sound everywhere, and tight on some deeper units, so an unsound
    1% change of a relaxation crosses the exact value."""
    gen = torch.Generator().manual_seed(20)
    tight = defaultdict(int)
    for name, net in EXACT_NETS.items():
        x = torch.rand(1, *net.input_shape, generator=gen, dtype=torch.float64)
        for eps in EXACT_CASES[p]:
            with torch.no_grad():
                bounds = _methods(net, x, eps, p)
            program = ExactProgram(net, x[0], eps, p)
            # layer 0 is exact by Hoelder (test_first_layer_is_exact...); relaxations act from layer 1
            for k, size in enumerate(net.hidden_sizes + [net.num_classes]):
                for j in range(size if k > 0 else 0):
                    c = np.eye(size)[j]
                    low, high = program.minimum(k, c), -program.minimum(k, -c)
                    for method, layers in bounds.items():
                        lo, hi = float(layers[k][0][0, j]), float(layers[k][1][0, j])
                        assert lo <= low + TOL and hi >= high - TOL, (name, method, eps, k, j, lo, low, hi, high)
                        tight[method] += abs(lo - low) < TOL or abs(hi - high) < TOL
    assert tight["kw"] > 0 and tight["crown_raw"] > 0 and tight["crown"] > 0, dict(tight)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_crown_intersection_step(name, p):
    """CROWN's own pass differs from KW (neither contains the other); ``crown`` intersects the
    two at every layer, so at the second layer (same exact first-layer bounds) it is exactly
    the intersection, and it is never looser than either KW or CROWN's own pass."""
    net = NETS[name]
    x = torch.rand(4, *net.input_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    crown_only_looser = crown_only_tighter = 0
    with torch.no_grad():
        for eps in (0.05, 0.3):
            kw, crown = layer_bounds(net, x, eps, p, "kw"), layer_bounds(net, x, eps, p, "crown")
            raw = layer_bounds(net, x, eps, p, "crown", intersect=False)
            torch.testing.assert_close(crown[1][0], torch.maximum(raw[1][0], kw[1][0]), rtol=0, atol=0)
            torch.testing.assert_close(crown[1][1], torch.minimum(raw[1][1], kw[1][1]), rtol=0, atol=0)
            for (kl, ku), (cl, cu), (rl, ru) in zip(kw, crown, raw):
                assert (cl >= kl).all() and (cu <= ku).all()
                crown_only_looser += int((rl < kl - 1e-12).sum())
                crown_only_tighter += int((rl > kl + 1e-12).sum())
    assert crown_only_looser > 0 and crown_only_tighter > 0  # the intersection is not a tautology


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
    x = torch.rand(8, 2, generator=torch.Generator().manual_seed(30 + seed), dtype=torch.float64)
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


@pytest.mark.parametrize("p", [1.0, INF])
def test_certificates_and_margins_against_exact_margins(p):
    """certify and margin_lower_bounds against the exact minimal margins over the ball (MIP):
    certified points have every exact margin > 0, bounds never exceed them, and the cases hold
    both certified points and points whose exact margin is negative (so neither 'always' nor
    'never' passes)."""
    gen = torch.Generator().manual_seed(21)
    certified, broken = defaultdict(int), 0
    for net in EXACT_NETS.values():
        x = torch.rand(3, *net.input_shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            y = net(x).argmax(1)
        for eps in EXACT_CASES[p]:
            with torch.no_grad():
                verdicts = {m: certify(net, x, y, eps, p, m) for m in METHODS}
                margins = {m: margin_lower_bounds(net, x, y, eps, p, m) for m in METHODS}
            for b in range(len(x)):
                program = ExactProgram(net, x[b], eps, p)
                exact = [program.minimum(len(net.layers) - 1, np.eye(net.num_classes)[int(y[b])] - np.eye(net.num_classes)[s])
                         for s in range(net.num_classes) if s != int(y[b])]
                broken += min(exact) < -TOL
                others = [s for s in range(net.num_classes) if s != int(y[b])]
                for m in METHODS:
                    assert all(float(margins[m][b, s]) <= e + TOL for s, e in zip(others, exact)), (m, b, eps)
                    if verdicts[m][b]:
                        assert min(exact) > 0, (m, b, eps)
                        certified[m] += 1
    assert broken > 0 and all(certified[m] > 0 for m in METHODS), (broken, dict(certified))


@pytest.mark.parametrize("name, chunk", [("mlp", 64), ("cnn_small_7x7", 1500)])
@pytest.mark.parametrize("method", METHODS)
def test_chunked_bounds_equal_one_chunk(name, chunk, method, monkeypatch):
    """A chunk size small enough for several chunks (units on the dense path, examples on the
    patch path) gives the bounds of one chunk."""
    net = NETS[name]
    x = torch.rand(5, *net.input_shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eps = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.3], dtype=torch.float64)
    calls = []
    for module, fn in ((linear_bounds, "backsubstitute"), (patches, "conv_stack_bounds")):
        original = getattr(module, fn)
        monkeypatch.setattr(module, fn, lambda *a, f=original: calls.append(1) or f(*a))
    with torch.no_grad():
        whole = layer_bounds(net, x, eps, 2.0, method)
        single = len(calls)
        monkeypatch.setattr(linear_bounds, "CHUNK_ELEMENTS", chunk)
        chunked = layer_bounds(net, x, eps, 2.0, method)
    assert len(calls) - single > single > 0  # the same layers, in more pieces
    for (wl, wu), (cl, cu) in zip(whole, chunked):
        torch.testing.assert_close(cl, wl, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cu, wu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_margins_are_differentiable_in_the_parameters(method):
    """Robust training (Wong & Kolter) back-propagates through the bounds, patch path included."""
    torch.manual_seed(7)
    net = cnn_small((1, 8, 8), 3)
    x, y = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(9)), torch.tensor([0, 1, 2, 0])
    for p in (1.0, 2.0, INF):
        net.zero_grad()
        loss = nn.functional.cross_entropy(-margin_lower_bounds(net, x, y, 0.1, p, method), y)
        loss.backward()
        grads = [q.grad for q in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
