"""MMR-l_p (eq 16) and MMR-Universal (eq 17): values against hand computations from the reference
distances, the k_B selections, gradient directions, schedules, configs."""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import mmru.regularizers.mmr as mmr_module
import mmru.regularizers.universal as universal_module
from mmru.models import ReLUNet, cnn_small, mlp
from mmru.regions import RegionDistances
from mmru.regions_reference import reference_region_distances
from mmru.regularizers.mmr import MMR, closest_hinge
from mmru.regularizers.universal import MMRUniversal

INF = math.inf
CONF = Path(__file__).resolve().parents[1] / "conf" / "regularizer"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets

NETS = {
    "mlp": lambda: mlp((1, 5, 5), 4, (12, 10)),
    "conv": lambda: ReLUNet([nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Linear(18, 6), nn.Linear(6, 4)], (1, 5, 5)),
}


def setup(seed=0, n=6, name="mlp"):
    torch.manual_seed(seed)
    net = NETS[name]().double()
    x = torch.rand(n, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (n,))
    return net, x, y


def hinge(d, gamma):
    return max(0.0, 1.0 - d / gamma)


def hand_mmr(dist, y, gamma_b, gamma_d, lam, k_b, k_d):
    """Eq (16) point by point from plain lists, averaged over the batch."""
    total = 0.0
    for i in range(len(y)):
        boundary = sorted(dist.boundary[i].tolist())[:k_b]
        decision = sorted(d for s, d in enumerate(dist.decision[i].tolist()) if s != y[i])[:k_d]
        total += sum(hinge(d, gamma_b) for d in boundary) / k_b + sum(hinge(d, gamma_d) for d in decision) / k_d
    return lam * total / len(y)


def closest(values, k):
    return set(sorted(range(len(values)), key=values.__getitem__)[:k])


def hand_universal(d1, dinf, y, lambda_1, lambda_inf, gamma_1, gamma_inf, k_b, weighting):
    """Eq (17) as the authors' code computes it: both hinges on the union of the k_B closest l1 and
    the k_B closest l_inf region boundaries (/ k_B), both on the K - 1 signed d^D, / K (their n_db,
    per_norm) or / (K - 1) (eq 17 as printed, per_term)."""
    total = 0.0
    for i in range(len(y)):
        b1, binf = d1.boundary[i].tolist(), dinf.boundary[i].tolist()
        union = closest(b1, k_b) | closest(binf, k_b)
        region_1 = sum(hinge(b1[j], gamma_1) for j in union) / k_b
        region_inf = sum(hinge(binf[j], gamma_inf) for j in union) / k_b
        others = [s for s in range(d1.decision.shape[1]) if s != y[i]]
        n_db = len(others) + 1 if weighting == "per_norm" else len(others)
        decision_1 = sum(hinge(d1.decision[i, s].item(), gamma_1) for s in others) / n_db
        decision_inf = sum(hinge(dinf.decision[i, s].item(), gamma_inf) for s in others) / n_db
        if weighting == "per_norm":
            total += lambda_1 * (region_1 + decision_1) + lambda_inf * (region_inf + decision_inf)
        else:
            total += lambda_1 * (region_1 + region_inf) + lambda_inf * (decision_1 + decision_inf)
    return total / len(y)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_mmr_equals_eq_16_computed_by_hand(p, name):
    net, x, y = setup(0, name=name)
    dist = reference_region_distances(net, x, y, [p])[p]
    n_hidden = dist.boundary.shape[1]
    # gammas at medians of the distances in play: some hinges bite and some vanish
    gamma_b = dist.boundary.sort(1).values[:, : int(0.25 * n_hidden)].median().item()
    gamma_d = dist.decision[dist.decision.isfinite()].abs().median().item()
    reg = MMR(p, gamma_b=gamma_b, gamma_d=gamma_d, lam=2.5, k_b_start=0.25, k_d=2)
    penalty, logs = reg.penalty(net, x, y)
    k_b = int(0.25 * n_hidden)
    assert logs["k_b"] == k_b
    expected = hand_mmr(dist, y.tolist(), gamma_b, gamma_d, 2.5, k_b, 2)
    assert penalty.item() == pytest.approx(expected, rel=1e-10)
    # k_D = None: all K - 1 other classes
    penalty = MMR(p, gamma_b, gamma_d, 2.5, k_b_start=0.25).penalty(net, x, y)[0]
    assert penalty.item() == pytest.approx(hand_mmr(dist, y.tolist(), gamma_b, gamma_d, 2.5, k_b, 3), rel=1e-10)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("weighting", ["per_norm", "per_term"])
def test_universal_equals_eq_17_computed_by_hand(weighting, name):
    net, x, y = setup(1, name=name)
    dist = reference_region_distances(net, x, y, [1, INF])
    d1, dinf = dist[1.0], dist[INF]
    k_b = int(0.2 * d1.boundary.shape[1])
    # the test can fail: the two selections differ somewhere, misclassified points have d^D < 0,
    # and with these gammas some selected hinges are 0 and some are not
    assert any(closest(d1.boundary[i].tolist(), k_b) != closest(dinf.boundary[i].tolist(), k_b) for i in range(len(y)))
    assert (net(x).argmax(1) != y).any()
    gamma_1, gamma_inf = d1.boundary.median().item(), dinf.boundary.sort(1).values[:, :k_b].median().item()
    reg = MMRUniversal(1.5, 4.0, gamma_1, gamma_inf, k_b_start=0.2, weighting=weighting)
    penalty, logs = reg.penalty(net, x, y)
    expected = hand_universal(d1, dinf, y.tolist(), 1.5, 4.0, gamma_1, gamma_inf, k_b, weighting)
    assert penalty.item() == pytest.approx(expected, rel=1e-10)
    assert logs["k_b"] == k_b
    rho_inf = torch.minimum(dinf.boundary.min(1).values, dinf.decision.abs().min(1).values)
    assert logs["rho_inf_median"].item() == pytest.approx(rho_inf.median().item(), rel=1e-10)


def synthetic(boundary_1, boundary_inf, decision):
    """RegionDistances with gradients to read which entries a penalty uses."""
    out = {}
    for p, boundary in ((1.0, boundary_1), (INF, boundary_inf)):
        out[p] = RegionDistances(p, torch.tensor(boundary, requires_grad=True), torch.tensor(decision))
    return out


def test_k_b_selection_uses_exactly_the_closest_units(monkeypatch):
    """With every hinge active, d penalty / d d^B is nonzero exactly on the selected units."""
    b1 = [[0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4, 1.0]]
    binf = [[0.05, 0.4, 0.01, 0.3, 0.02, 0.5, 0.45, 0.35, 0.25, 0.15]]
    decision = [[INF, 0.3, -0.2]]
    y = torch.tensor([0])
    dist = synthetic(b1, binf, decision)
    monkeypatch.setattr(mmr_module, "distances_for", lambda *args: dist)
    MMR(1, gamma_b=10.0, gamma_d=10.0, lam=1.0, k_b_start=0.3).penalty(None, None, y)[0].backward()
    assert set(dist[1.0].boundary.grad[0].nonzero().flatten().tolist()) == {1, 5, 3}  # 0.1, 0.2, 0.3

    dist = synthetic(b1, binf, decision)
    monkeypatch.setattr(universal_module, "distances_for", lambda *args: dist)
    MMRUniversal(1.0, 1.0, 10.0, 10.0, k_b_start=0.3).penalty(None, None, y)[0].backward()
    union = {1, 5, 3} | {2, 4, 0}  # l1: 0.1, 0.2, 0.3; l_inf: 0.01, 0.02, 0.05
    for p in (1.0, INF):
        assert set(dist[p].boundary.grad[0].nonzero().flatten().tolist()) == union


@pytest.mark.parametrize("weighting, expected", [
    # l1 hinges at gamma_1 = 1: 1 - 0.5 = 0.5 and 1 + 0.5 = 1.5 (sum 2); l_inf hinges at gamma_inf = 0.1:
    # 1 - 0.25 / 0.1 = 0 and 1 - 0.05 / 0.1 = 0.5 (sum 0.5); the region hinges are all 0 (d^B >> gamma)
    ("per_norm", 3.0 * 2.0 / 3 + 12.0 * 0.5 / 3),  # the authors' code: each norm's sum / K, K = 3
    ("per_term", 12.0 * (2.0 + 0.5) / 2),  # eq (17) as printed: lambda_inf on the decision term / (K - 1)
])
def test_universal_decision_divisor_is_k_for_the_authors_code_and_k_minus_1_for_eq_17(monkeypatch, weighting,
                                                                                       expected):
    dist = {1.0: RegionDistances(1.0, torch.full((1, 4), 50.0), torch.tensor([[INF, 0.5, -0.5]])),
            INF: RegionDistances(INF, torch.full((1, 4), 50.0), torch.tensor([[INF, 0.25, 0.05]]))}
    monkeypatch.setattr(universal_module, "distances_for", lambda *args: dist)
    reg = MMRUniversal(3.0, 12.0, 1.0, 0.1, k_b_start=0.5, weighting=weighting)
    penalty, logs = reg.penalty(None, None, torch.tensor([0]))
    assert penalty.item() == pytest.approx(expected, rel=1e-12)
    assert logs["reg_boundary_l1"].item() == 0.0


def step_against_gradient(net, reg, x, y, size=1e-4):
    net.zero_grad()
    reg.penalty(net, x, y)[0].backward()
    with torch.no_grad():
        norm = torch.sqrt(sum((p.grad**2).sum() for p in net.parameters()))
        for p in net.parameters():
            p -= size * p.grad / norm


def active_sum(dist, y, selections, gamma_b, gamma_d):
    """Sum of the distances whose hinges bite: selected d^B below gamma_b, d^D (s != y) below gamma_d."""
    total = 0.0
    for i, selected in enumerate(selections):
        boundary = dist.boundary[i].tolist()
        total += sum(boundary[j] for j in selected if boundary[j] < gamma_b)
        total += sum(d for s, d in enumerate(dist.decision[i].tolist()) if s != y[i] and d < gamma_d)
    return total


@pytest.mark.parametrize("which", ["boundary", "decision"])
@pytest.mark.parametrize("p", [1.0, INF])
def test_a_step_against_the_mmr_gradient_pushes_the_active_boundaries_away(p, which):
    net, x, _ = setup(2)
    y = net(x).argmax(1)  # correct: a tiny gamma switches a hinge off (one hinge at a time, as a
    # step on a sum may trade one term for the other)
    dist = reference_region_distances(net, x, y, [p])[p]
    k_b = int(0.1 * dist.boundary.shape[1])
    if which == "boundary":
        gamma_b, gamma_d = dist.boundary.sort(1).values[:, :k_b].median().item(), 1e-12
    else:
        gamma_b, gamma_d = 1e-12, 2 * dist.decision.abs().min().item()
    reg = MMR(p, gamma_b, gamma_d, lam=1.0, k_b_start=0.1)

    def active(dist):
        return active_sum(dist, y.tolist(), [closest(b, k_b) for b in dist.boundary.tolist()], gamma_b, gamma_d)

    before = active(dist)
    assert before > 0
    step_against_gradient(net, reg, x, y)
    assert active(reference_region_distances(net, x, y, [p])[p]) - before > 1e-6 * before


@pytest.mark.parametrize("norm", [1.0, INF])
def test_a_step_against_the_universal_gradient_pushes_each_norms_boundaries_away(norm):
    """The other norm's lambda set to 0: a step moves this norm's active region boundaries (on the
    union of both selections) and decision boundaries (misclassified points included) away from x."""
    net, x, y = setup(3)
    dist = reference_region_distances(net, x, y, [1, INF])
    k_b = int(0.2 * dist[1.0].boundary.shape[1])
    gammas = {p: dist[p].boundary.sort(1).values[:, :k_b].median().item() for p in (1.0, INF)}
    reg = MMRUniversal(float(norm == 1.0), float(norm == INF), gammas[1.0], gammas[INF], k_b_start=0.2)

    def active(dist):
        pairs = zip(dist[1.0].boundary.tolist(), dist[INF].boundary.tolist())
        union = [closest(b1, k_b) | closest(binf, k_b) for b1, binf in pairs]
        return active_sum(dist[norm], y.tolist(), union, gammas[norm], gammas[norm])

    before = active(dist)
    assert before != 0
    step_against_gradient(net, reg, x, y)
    assert active(reference_region_distances(net, x, y, [1, INF])) - before > 1e-6 * abs(before)


def test_schedules_follow_the_authors_code():
    reg = MMRUniversal(3.0, 12.0, 1.0, 0.15)
    assert reg.lambda_factor == 1.0 and reg.k_b_fraction == 0.2  # before any schedule call
    first = reg.on_epoch_start(0, 100)
    assert first["lambda_factor"] == pytest.approx(0.1)
    assert first["k_b_fraction"] == pytest.approx(0.2 - 0.15 / 100)
    assert reg.on_epoch_start(4, 100)["lambda_factor"] == pytest.approx(0.5)
    assert reg.on_epoch_start(9, 100)["lambda_factor"] == 1.0
    last = reg.on_epoch_start(99, 100)
    assert last == {"lambda_factor": 1.0, "k_b_fraction": pytest.approx(0.05)}
    assert reg.k_b(4804) == int(0.05 * 4804) and reg.k_b(3) == 1
    mmr = MMR(2, 0.3, 0.3, 1.0)
    assert mmr.on_epoch_start(99, 100)["k_b_fraction"] == pytest.approx(0.02)


def test_hinges_vanish_for_tiny_gamma():
    net, x, _ = setup(2)
    y = net(x).argmax(1)  # correctly classified: every signed d^D is positive
    for reg in (MMR(INF, 1e-12, 1e-12, 1.0), MMRUniversal(1.0, 1.0, 1e-12, 1e-12)):
        assert reg.penalty(net, x, y)[0].item() == 0.0


def test_misclassified_points_are_pushed_by_the_signed_decision_distance():
    net, x, _ = setup(3)
    y_wrong = (net(x).argmax(1) + 1) % 4
    reg = MMR(INF, 1e-12, 1e-12, 1.0)
    assert reg.penalty(net, x, y_wrong)[0].item() > 1e6  # negative d^D: the hinge is not bounded by 1


def test_lambda_factor_scales_the_penalty():
    net, x, y = setup(4)
    reg = MMRUniversal(3.0, 12.0, 1.0, 0.15)
    full = reg.penalty(net, x, y)[0]
    reg.on_epoch_start(0, 50)
    reg.k_b_fraction = 0.2  # isolate the lambda ramp
    torch.testing.assert_close(reg.penalty(net, x, y)[0], 0.1 * full)


def test_dead_units_give_the_reference_penalty_and_gradients():
    """Half of the first layer's channels and of the dense units dead: floored norms, finite values
    equal to the identity-image reference, and so are the parameter gradients."""
    torch.manual_seed(5)
    net = cnn_small((1, 8, 8), 4).double()
    with torch.no_grad():
        net.layers[0].bias[:8].fill_(-1e3)
        net.layers[2].bias[:50].fill_(-1e3)
    x, y = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.randint(0, 4, (3,))
    makers = (lambda g: MMRUniversal(3.0, 12.0, 1.0, 0.15, geometry=g), lambda g: MMR(2, 0.45, 0.45, 3.0, geometry=g))
    for make in makers:
        results = []
        for geometry in ("fast", "reference"):
            net.zero_grad()
            loss = make(geometry).training_loss(net, x, y)
            loss.loss.backward()
            results.append((loss.loss.detach(), [p.grad.clone() for p in net.parameters()]))
        (fast, fast_grads), (ref, ref_grads) = results
        assert torch.isfinite(fast) and fast > 0
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=0)
        for g, r in zip(fast_grads, ref_grads):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-10)


def test_closest_hinge_averages_the_k_smallest():
    d = torch.tensor([[3.0, 0.5, 1.0, 0.0]])
    torch.testing.assert_close(closest_hinge(d, 2, 1.0), torch.tensor([0.75]))


@pytest.mark.parametrize("name", ["mmr_l2", "mmr_linf", "universal"])
def test_configs_instantiate_with_their_numbers(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    reg = instantiate(cfg)
    net, x, y = setup(7, 4)
    n_hidden = net.num_hidden
    k_b = max(1, int(cfg.k_b_start * n_hidden))
    penalty = reg.penalty(net, x, y)[0].item()
    if name == "universal":
        dist = reference_region_distances(net, x, y, [1, INF])
        args = (cfg.lambda_1, cfg.lambda_inf, cfg.gamma_1, cfg.gamma_inf, k_b, cfg.weighting)
        expected = hand_universal(dist[1.0], dist[INF], y.tolist(), *args)
    else:
        p = float(cfg.p)
        dist = reference_region_distances(net, x, y, [p])[p]
        expected = hand_mmr(dist, y.tolist(), cfg.gamma_b, cfg.gamma_d, cfg.lam, k_b, 3)
    assert expected > 0 and penalty == pytest.approx(expected, rel=1e-10)
