"""MMR-l_p (eq 16) and MMR-Universal (eq 17): hinge terms, selections, schedules, configs."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmru.models import cnn_small, mlp
from mmru.regions import region_distances
from mmru.regularizers.mmr import MMR
from mmru.regularizers.universal import MMRUniversal
from mmru.regularizers.mmr import closest_hinge

INF = math.inf
CONF = Path(__file__).resolve().parents[1] / "conf" / "regularizer"


def setup(seed=0, n=6):
    torch.manual_seed(seed)
    net = mlp((1, 5, 5), 4, (12, 10)).double()
    x = torch.rand(n, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (n,))
    return net, x, y


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


def test_mmr_matches_eq_16_on_the_distances():
    net, x, y = setup()
    reg = MMR(2, gamma_b=0.5, gamma_d=0.7, lam=2.0, k_b_start=0.25, k_d=2)
    penalty, logs = reg.penalty(net, x, y)
    d = region_distances(net, x, y, [2])[2.0]
    k_b = int(0.25 * 22)
    boundary = F.relu(1 - d.boundary.sort(1).values[:, :k_b] / 0.5).mean(1)
    decision = F.relu(1 - d.decision.sort(1).values[:, :2] / 0.7).mean(1)
    torch.testing.assert_close(penalty, 2.0 * (boundary + decision).mean())
    assert {"reg_boundary_l2", "reg_decision_l2", "rho_2_median", "k_b"} <= logs.keys()
    assert logs["k_b"] == k_b


def test_universal_region_term_uses_the_union_of_both_selections():
    net, x, y = setup(1)
    reg = MMRUniversal(lambda_1=1.5, lambda_inf=4.0, gamma_1=2.0, gamma_inf=0.3, k_b_start=0.1)
    penalty, logs = reg.penalty(net, x, y)
    dist = region_distances(net, x, y, [1, INF])
    d1, di = dist[1.0], dist[INF]
    k = int(0.1 * 22)
    sel = torch.zeros_like(d1.boundary)
    for i in range(len(x)):
        chosen = set(d1.boundary[i].argsort()[:k].tolist()) | set(di.boundary[i].argsort()[:k].tolist())
        sel[i, sorted(chosen)] = 1
    assert (sel.sum(1) >= k).all() and (sel.sum(1) <= 2 * k).all()
    b1 = (F.relu(1 - d1.boundary / 2.0) * sel).sum(1) / k
    binf = (F.relu(1 - di.boundary / 0.3) * sel).sum(1) / k
    others = ~F.one_hot(y, 4).bool()
    dec1 = F.relu(1 - d1.decision[others].view(-1, 3) / 2.0).sum(1) / 3
    decinf = F.relu(1 - di.decision[others].view(-1, 3) / 0.3).sum(1) / 3
    torch.testing.assert_close(penalty, (1.5 * (b1 + dec1) + 4.0 * (binf + decinf)).mean())
    per_term = MMRUniversal(1.5, 4.0, 2.0, 0.3, k_b_start=0.1, weighting="per_term").penalty(net, x, y)[0]
    torch.testing.assert_close(per_term, (1.5 * (b1 + binf) + 4.0 * (dec1 + decinf)).mean())
    for name in ("reg_boundary_l1", "reg_boundary_linf", "reg_decision_l1", "reg_decision_linf"):
        assert torch.isfinite(logs[name])
    rho_inf = torch.minimum(di.boundary.min(1).values, di.decision.abs().min(1).values)
    torch.testing.assert_close(logs["rho_inf_median"], rho_inf.median())


def test_hinges_vanish_for_tiny_gamma_and_bite_for_large_gamma():
    net, x, _ = setup(2)
    y = net(x).argmax(1)  # correctly classified: every signed d^D is positive
    for reg in (MMR(INF, 1e-12, 1e-12, 1.0), MMRUniversal(1.0, 1.0, 1e-12, 1e-12)):
        penalty, logs = reg.penalty(net, x, y)
        assert penalty.item() == 0.0
    for reg in (MMR(1, 1e6, 1e6, 1.0), MMRUniversal(1.0, 1.0, 1e6, 1e6)):
        penalty, logs = reg.penalty(net, x, y)
        assert penalty.item() > 1.0  # each averaged hinge is close to 1
        assert all(v > 0 for k, v in logs.items() if k.startswith("reg_"))


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


def test_penalty_and_gradients_finite_with_dead_units():
    torch.manual_seed(5)
    net = cnn_small((1, 12, 12), 4)
    with torch.no_grad():
        net.layers[0].bias[:8].fill_(-1e3)  # half of the first layer's channels dead
        net.layers[2].bias[:50].fill_(-1e3)
    x, y = torch.rand(4, 1, 12, 12), torch.randint(0, 4, (4,))
    for reg in (MMRUniversal(3.0, 12.0, 1.0, 0.15), MMR(2, 0.45, 0.45, 3.0)):
        net.zero_grad()
        loss = reg.training_loss(net, x, y)
        loss.loss.backward()
        assert torch.isfinite(loss.loss)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        assert "penalty" in loss.logs and "ce" in loss.logs


def test_reference_geometry_gives_the_same_penalty():
    net, x, y = setup(6)
    fast = MMRUniversal(3.0, 12.0, 1.0, 0.15).penalty(net, x, y)[0]
    ref = MMRUniversal(3.0, 12.0, 1.0, 0.15, geometry="reference").penalty(net, x, y)[0]
    torch.testing.assert_close(fast, ref)


def test_closest_hinge_averages_the_k_smallest():
    d = torch.tensor([[3.0, 0.5, 1.0, 0.0]])
    torch.testing.assert_close(closest_hinge(d, 2, 1.0), torch.tensor([0.75]))


@pytest.mark.parametrize(
    "name,cls,p", [("mmr_l2", MMR, 2.0), ("mmr_linf", MMR, INF), ("universal", MMRUniversal, None)]
)
def test_configs_instantiate(name, cls, p):
    reg = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert isinstance(reg, cls)
    if p is not None:
        assert reg.p == p
    net, x, y = setup(7, 2)
    penalty, _ = reg.penalty(net.float(), x.float(), y)
    assert penalty.ndim == 0 and torch.isfinite(penalty)
