"""Attacks: feasibility (ball and box), exactness on linear classifiers, the strict
counterexample check, and no side effects on the network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmru.attacks.evaluate as evaluate
from mmru.attacks import adversarial_norm, attack, check_adversarial, pgd, snap_to_ball
from mmru.attacks.geometry import CHECK_MARGIN
from mmru.models import ReLUNet, cnn_small, mlp
from mmru.verify import mip_min_distance
from tiny_nets import through_the_box

NORMS = [1, 2, math.inf]
EPS = {1: 1.0, 2: 0.3, math.inf: 0.1}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cheap_eval(monkeypatch):
    """Shorter attack schedules: the tests check behaviour, not attack strength."""
    monkeypatch.setattr(evaluate, "FAST_STEPS", 10)
    monkeypatch.setattr(evaluate, "FAST_RESTARTS", 2)
    monkeypatch.setattr(evaluate, "APGD_ITERS", 10)


def _images(n: int, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    """Points of [0,1]^d with many coordinates exactly on the box faces, as in MNIST."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    face = torch.rand(n, *shape, generator=g)
    x[face < 0.3] = 0.0
    x[face > 0.7] = 1.0
    return x


def _small_cnn(seed: int = 0) -> ReLUNet:
    torch.manual_seed(seed)
    return cnn_small((1, 8, 8), 10)


def _feasible(x, x_adv, eps, p) -> bool:
    in_ball = adversarial_norm(x, x_adv, p) <= eps * (1 - CHECK_MARGIN)
    return bool(in_ball.all()) and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("p", NORMS)
def test_pgd_stays_in_ball_and_box(p):
    net, x = _small_cnn(), _images(16)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    for step_size in (None, 10 * EPS[p]):  # default, and steps that overshoot the ball
        x_adv = pgd(net, x, y, EPS[p], p, steps=8, step_size=step_size, restarts=2)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
        assert _feasible(x, x_adv, EPS[p], p)


@pytest.mark.parametrize("strength", ["fast", "strong"])
@pytest.mark.parametrize("p", NORMS)
def test_attack_stays_in_ball_and_box_and_counts_only_checked(p, strength, cheap_eval):
    torch.manual_seed(0)
    net, x = _small_cnn(), _images(12)
    y = net(x).argmax(1)  # correctly classified, so every stage has work to do
    x_adv = attack(net, x, y, EPS[p], p, strength)
    assert _feasible(x, x_adv, EPS[p], p)
    ok = check_adversarial(net, x, x_adv, y, EPS[p], p)
    assert ok.dtype == torch.bool and ok.shape == (12,)
    assert (net(x_adv).argmax(1) != y)[ok].all()


def _linear_points(net: ReLUNet, p: float, distance: float, n: int = 8):
    """Points in the box's interior whose exact l_p distance to the decision boundary of a
    2-class linear net is ``distance``, with the minimising perturbation direction."""
    weight, bias = net.layers[0].weight.detach().double(), net.layers[0].bias.detach().double()
    w, b = weight[1] - weight[0], float(bias[1] - bias[0])
    q = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[float(p)]
    margin = distance * float(torch.linalg.vector_norm(w, ord=q))
    z = 0.45 + 0.1 * torch.rand(n, w.numel(), dtype=torch.float64)
    # move z along w so that w.x + b = margin for every point: class 1, at the same distance
    x = z - ((z @ w + b - margin) / (w @ w)).unsqueeze(1) * w
    if p == math.inf:
        direction = -w.sign()
    elif p == 2:
        direction = -w / w.norm()
    else:
        direction = torch.zeros_like(w)
        i = w.abs().argmax()
        direction[i] = -w[i].sign()
    shape = net.input_shape
    return x.float().view(n, *shape), torch.ones(n, dtype=torch.long), direction.view(shape)


@pytest.mark.parametrize("p", NORMS)
def test_linear_classifier_exact_distance(p):
    torch.manual_seed(0)
    net = mlp((1, 28, 28), 2, widths=())  # one affine layer: logits = W x + b
    # Gaussian weights have a few dominant coordinates (uniform ones hardly do), so the l_1
    # attack must concentrate its budget on the largest |w_i| to reach the exact distance.
    # std 0.05 keeps logit margins O(1): at margins ~30 the float32 cross-entropy gradient
    # loses the true class's term (its softmax rounds to 1) and points the wrong way.
    nn.init.normal_(net.layers[0].weight, std=0.05)
    distance = 0.05
    x, y, direction = _linear_points(net, p, distance)
    assert (net(x).argmax(1) == y).all()

    # PGD finds a counterexample once eps exceeds the exact distance by 10%
    x_adv = pgd(net, x, y, 1.1 * distance, p, steps=50)
    assert check_adversarial(net, x, x_adv, y, 1.1 * distance, p).all()

    # below the distance nothing may count, whatever the attack returns
    below = 0.99 * distance
    assert not check_adversarial(net, x, pgd(net, x, y, below, p, steps=50), y, below, p).any()
    assert not check_adversarial(net, x, x + below * direction, y, below, p).any()
    # the exact minimiser just beyond the distance does count
    beyond = 1.01 * distance
    assert check_adversarial(net, x, x + beyond * direction, y, 1.02 * distance, p).all()


def _threshold_net(threshold: float) -> ReLUNet:
    """2 classes on [0,1]^4: class 1 iff x_0 > threshold (logits 0 and x_0 - threshold)."""
    net = mlp((4,), 2, widths=())
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].weight[1, 0] = 1.0
        net.layers[0].bias.copy_(torch.tensor([0.0, -threshold]))
    return net


def test_check_adversarial_rejects_outside_ball_box_or_correct():
    net = _threshold_net(0.25)
    x = torch.tensor([[0.125, 0.5, 0.5, 0.5]])
    y = torch.tensor([0])
    fooled = x.clone()
    fooled[0, 0] = 0.375  # misclassified, at distance exactly 0.25 in every norm
    for p in NORMS:
        assert check_adversarial(net, x, fooled, y, 0.3, p).all()
        assert not check_adversarial(net, x, fooled, y, 0.2, p).any()  # outside the ball
        assert not check_adversarial(net, x, fooled, y, 0.25, p).any()  # on the sphere: margin
        assert not check_adversarial(net, x, x, y, 0.3, p).any()  # correctly classified
    tie = x.clone()
    tie[0, 0] = 0.25  # both logits exactly 0: not a misclassification
    assert not check_adversarial(net, x, tie, y, 0.3, 2).any()

    net = _threshold_net(1.0625)
    x = torch.tensor([[1.0, 0.5, 0.5, 0.5]])
    outside_box = x.clone()
    outside_box[0, 0] = 1.125  # misclassified, in the ball, above the box
    assert (net(outside_box).argmax(1) != y).all()
    assert not check_adversarial(net, x, outside_box, y, 0.5, 2).any()


@pytest.mark.parametrize("p", NORMS)
def test_snap_to_ball(p):
    torch.manual_seed(0)
    x = _images(32)
    far = x + 3 * torch.randn_like(x)  # far outside ball and box
    snapped = snap_to_ball(x, far, EPS[p], p)
    assert snapped.dtype == x.dtype and _feasible(x, snapped, EPS[p], p)
    # on the sphere up to float32 rounding: strictly inside after snapping
    scale = EPS[p] / adversarial_norm(x, snapped, p).float().view(-1, 1, 1, 1)
    on_sphere = x + (snapped - x) * scale
    assert _feasible(x, snap_to_ball(x, on_sphere, EPS[p], p), EPS[p], p)
    inside = snap_to_ball(x, x + 0.01 * (snapped - x), EPS[p], p)
    assert torch.equal(snap_to_ball(x, inside, EPS[p], p), inside)  # points inside stay put


def test_attacks_leave_mode_requires_grad_and_grads_alone(cheap_eval):
    net, x = _small_cnn(), _images(6)
    y = torch.zeros(6, dtype=torch.long)
    net.train()
    net.layers[1].eval()  # mixed modes must come back as they were
    net.layers[0].bias.requires_grad_(False)
    modes = [m.training for m in net.modules()]
    flags = [q.requires_grad for q in net.parameters()]
    for p in NORMS:
        pgd(net, x, y, EPS[p], p, steps=3)
        with torch.no_grad():  # evaluation code may call the attacks under no_grad
            attack(net, x, y, EPS[p], p, "strong")
    assert [m.training for m in net.modules()] == modes
    assert [q.requires_grad for q in net.parameters()] == flags
    assert all(q.grad is None for q in net.parameters())


def _trained_two_class_mlp():
    """A small MLP fit to two Gaussian blobs in R^20 (flat inputs: no image shape)."""
    torch.manual_seed(0)
    n, d = 256, 20
    y = torch.randint(0, 2, (n,))
    x = (0.5 + 0.15 * (2 * y.float() - 1).unsqueeze(1) * torch.ones(d) / math.sqrt(d) * 3
         + 0.1 * torch.randn(n, d)).clamp(0, 1)
    net = mlp((d,), 2, widths=(32, 32))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net, x[:64], y[:64]


def test_trained_mlp_lower_bounds(cheap_eval):
    net, x, y = _trained_two_class_mlp()
    clean_error = (net(x).argmax(1) != y).float().mean()
    assert clean_error < 0.2
    for p in NORMS:
        eps = EPS[p]
        # eps = 0: the ball is {x}, so the LB is the clean error
        assert check_adversarial(net, x, attack(net, x, y, 0.0, p), y, 0.0, p).float().mean() == clean_error
        assert broken(net, x, y, eps, p, "fast").float().mean() > clean_error


def broken(net, x, y, eps, p, strength, seed=1) -> torch.Tensor:
    """Which points ``attack`` breaks (checked), from a fixed seed."""
    torch.manual_seed(seed)
    return check_adversarial(net, x, attack(net, x, y, eps, p, strength), y, eps, p)


def test_strong_adds_to_fast(cheap_eval):
    """APGD must add counterexamples PGD missed, not only repeat PGD's: on this net and seed,
    at the l_1 radius where PGD's fixed steps fall short, 'strong' breaks strictly more points."""
    net, x, y = _trained_two_class_mlp()
    counts = {p: (int(broken(net, x, y, EPS[p], p, "fast").sum()), int(broken(net, x, y, EPS[p], p, "strong").sum()))
              for p in NORMS}
    assert all(strong >= fast for fast, strong in counts.values()), counts
    assert counts[1][1] > counts[1][0] > 0, counts


@pytest.mark.parametrize("p", [1.0, math.inf])
def test_attack_success_follows_the_exact_distance(p, cheap_eval):
    """On a tiny net whose exact l_p distances the MIP proves optimal: every point whose
    distance is below half the radius is broken by PGD alone, and no point whose proven
    distance exceeds the radius is ever counted broken, whatever the attack."""
    net = through_the_box(mlp((4,), 2, (8, 8)), 5).eval()  # 2 classes: cross-entropy is monotone in the margin
    x = torch.rand(24, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = {1.0: 0.2, math.inf: 0.06}[p]
    exact = [mip_min_distance(net, x[i : i + 1], int(y[i]), p, time_limit=300) for i in range(len(x))]
    if not all(e.optimal for e in exact):
        pytest.skip("HiGHS did not prove every exact distance optimal within 300 s (not a verdict)")
    near = torch.tensor([e.distance < 0.5 * eps for e in exact])
    far = torch.tensor([e.lower > eps for e in exact])
    assert near.sum() >= 3 and far.sum() >= 3  # both kinds occur
    torch.manual_seed(0)
    by_pgd = check_adversarial(net, x, pgd(net, x, y, eps, p, steps=50, restarts=5), y, eps, p)
    assert by_pgd[near].all()
    for strength in ("fast", "strong"):
        assert not broken(net, x, y, eps, p, strength)[far].any()
    reckless = x + 5 * eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))  # outside ball and box
    assert not check_adversarial(net, x, reckless, y, eps, p)[far].any()
