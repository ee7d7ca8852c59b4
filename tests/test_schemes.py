"""Table 1's training schemes: AT-l_p, AT-(l1,l2,l_inf), KW, MMR+AT; objectives, configs, effects."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import ROOT
from mmru.attacks import adversarial_norm, pgd
from mmru.certification.checkpoint import load_checkpoint
from mmru.data import load_mnist5k
from mmru.models import mlp
from mmru.regularizers import Regularizer
from mmru.regularizers.adversarial import AdversarialTraining, UnionAdversarialTraining
from mmru.regularizers.bound_training import BoundTraining
from mmru.regularizers.mmr import MMR
from mmru.regularizers.mmr_at import MMRAdversarialTraining, UniversalAdversarialTraining
from mmru.regularizers.universal import MMRUniversal
from mmru.training import compose_train_config, train
from mmru.verify import certify, margin_lower_bounds

INF = math.inf
SCHEMES = sorted(p.stem for p in (ROOT / "conf" / "regularizer").glob("*.yaml"))
UNION_EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}


def setup(seed=0, n=8):
    torch.manual_seed(seed)
    net = mlp((1, 6, 6), 4, (16, 12))
    x = torch.rand(n, 1, 6, 6)
    y = torch.randint(0, 4, (n,))
    return net, x, y


# ---- adversarial training ---------------------------------------------------------------------

def test_at_trains_on_pgd_points_in_the_first_part_of_the_batch():
    net, x, y = setup()
    reg = AdversarialTraining(eps=0.2, p=INF, steps=5, adv_fraction=0.5)
    mixed, n, _ = reg.mixed_batch(net, x, y)
    assert n == 4
    assert torch.equal(mixed[n:], x[n:])
    assert (adversarial_norm(x[:n], mixed[:n], INF) <= 0.2).all() and not torch.equal(mixed[:n], x[:n])
    assert mixed.min() >= 0 and mixed.max() <= 1

    torch.manual_seed(1)
    out = reg.training_loss(net, x, y)
    torch.manual_seed(1)
    x_adv = pgd(net, x[:n], y[:n], 0.2, INF, 5)
    logits = net(torch.cat([x_adv, x[n:]]))
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))
    torch.testing.assert_close(out.logits, net(x))  # the clean batch's logits, for the accuracy metric
    torch.testing.assert_close(out.logs["ce_adv"], F.cross_entropy(logits[:n], y[:n]))
    torch.testing.assert_close(out.logs["ce_clean"], F.cross_entropy(net(x), y))
    assert out.logs["adv_error"] == (logits[:n].argmax(1) != y[:n]).float().mean()
    with torch.no_grad():  # at the same weights, PGD raised the loss of every adversarial point
        gain = F.cross_entropy(net(x_adv), y[:n], reduction="none") - F.cross_entropy(net(x[:n]), y[:n],
                                                                                       reduction="none")
    assert (gain > 0).all(), gain

    out.loss.backward()  # the attack left the parameters' gradients to the objective alone
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_at_without_adversarial_points_is_plain_training():
    net, x, y = setup()
    out = AdversarialTraining(eps=0.2, p=2, steps=5, adv_fraction=0.0).training_loss(net, x, y)
    torch.testing.assert_close(out.loss, Regularizer().training_loss(net, x, y).loss)
    with pytest.raises(ValueError, match="adv_fraction"):
        AdversarialTraining(eps=0.2, p=2, steps=5, adv_fraction=1.5)


def test_union_keeps_the_highest_loss_point_of_the_three_norms():
    net, x, y = setup(1, n=12)
    eps = {"l1": 2.0, "l2": 0.5, "linf": 0.11}  # radii at which each norm wins for some points
    reg = UnionAdversarialTraining(eps, steps=5)
    torch.manual_seed(2)
    best, logs = reg.adversarial_examples(net, x, y)
    torch.manual_seed(2)  # the same random starts, norm by norm
    candidates = [pgd(net, x, y, eps[name], p, 5) for name, p in (("l1", 1), ("l2", 2), ("linf", INF))]
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(net(c), y, reduction="none") for c in candidates])
        torch.testing.assert_close(F.cross_entropy(net(best), y, reduction="none"), losses.max(0).values)
    winner = losses.argmax(0)
    assert set(winner.tolist()) == {0, 1, 2}  # so a choice that ignores one norm fails
    for i, name in enumerate(("l1", "l2", "linf")):
        assert logs[f"won_{name}"] == pytest.approx((winner == i).float().mean().item())
        chosen = winner == i
        assert (adversarial_norm(x[chosen], best[chosen], name[1:]) <= eps[name]).all()
    with pytest.raises(ValueError, match="each of"):
        UnionAdversarialTraining({"l2": 0.3, "linf": 0.1}, steps=5)


# ---- Wong & Kolter robust training -------------------------------------------------------------

def test_kw_loss_is_the_robust_cross_entropy_at_the_ramped_eps():
    net, x, y = setup(2)
    reg = BoundTraining(eps=0.1, p=INF, eps_warmup_epochs=4)
    assert reg.current_eps == 0.1  # before any schedule call: the full radius
    assert reg.on_epoch_start(0, 10) == {"eps": pytest.approx(0.025)}
    out = reg.training_loss(net, x, y)
    margins = margin_lower_bounds(net, x, y, 0.025, INF, method="kw")
    torch.testing.assert_close(out.loss, F.cross_entropy(-margins, y))
    # the worst-case logits are worse than the clean ones, point by point
    with torch.no_grad():
        robust = F.cross_entropy(-margins, y, reduction="none")
        assert (robust >= F.cross_entropy(net(x), y, reduction="none")).all()
        # and worse at the full radius than at the ramped one
        assert (F.cross_entropy(-margin_lower_bounds(net, x, y, 0.1, INF, method="kw"), y, reduction="none")
                > robust).all()
    assert out.loss >= out.logs["ce_clean"]
    certified = certify(net, x, y, 0.025, INF, "kw")
    assert out.logs["robust_error"] == pytest.approx(1 - certified.float().mean().item())
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert reg.on_epoch_start(3, 10)["eps"] == pytest.approx(0.1)
    assert reg.on_epoch_start(9, 10)["eps"] == pytest.approx(0.1)
    assert BoundTraining(eps=0.3, p=2, eps_warmup_epochs=0).on_epoch_start(0, 10)["eps"] == 0.3
    with pytest.raises(ValueError, match="method"):
        BoundTraining(eps=0.1, p=INF, method="lp")


# ---- MMR + AT ----------------------------------------------------------------------------------

def test_mmr_at_adds_the_mmr_penalty_of_the_clean_part_to_the_at_loss():
    net, x, y = setup(3)
    kwargs = dict(p=INF, gamma_b=0.2, gamma_d=0.2, lam=0.5, k_b_start=0.2, k_b_end=0.05)
    reg = MMRAdversarialTraining(eps=0.1, steps=5, adv_fraction=0.5, **kwargs)
    mmr = MMR(**kwargs)
    assert reg.on_epoch_start(2, 10) == mmr.on_epoch_start(2, 10)  # MMR's lambda ramp and k_B decay
    torch.manual_seed(4)
    out = reg.training_loss(net, x, y)
    torch.manual_seed(4)
    at = AdversarialTraining(eps=0.1, p=INF, steps=5).training_loss(net, x, y)
    penalty, _ = mmr.penalty(net, x[4:], y[4:])
    torch.testing.assert_close(out.loss, at.loss + penalty)
    assert {"ce", "ce_clean", "ce_adv", "adv_error", "penalty", "reg_boundary_linf", "k_b"} <= out.logs.keys()
    with pytest.raises(ValueError, match="clean points"):
        MMRAdversarialTraining(eps=0.1, steps=5, adv_fraction=1.0, **kwargs)


def test_universal_at_adds_the_mmr_universal_penalty_of_the_clean_part_to_the_at_loss():
    net, x, y = setup(3)
    kwargs = dict(lambda_1=3.0, lambda_inf=40.0, gamma_1=1.0, gamma_inf=0.15, k_b_start=0.05, k_b_end=0.05,
                  lambda_warmup_epochs=2)
    reg = UniversalAdversarialTraining(eps=0.1, steps=5, adv_fraction=0.5, **kwargs)
    universal = MMRUniversal(**kwargs)
    assert reg.on_epoch_start(1, 10) == universal.on_epoch_start(1, 10)  # its lambda ramp
    torch.manual_seed(4)
    out = reg.training_loss(net, x, y)
    torch.manual_seed(4)
    at = AdversarialTraining(eps=0.1, p=INF, steps=5).training_loss(net, x, y)
    penalty, _ = universal.penalty(net, x[4:], y[4:])
    assert penalty > 0  # the comparison below could tell a penalty left out
    torch.testing.assert_close(out.loss, at.loss + penalty)
    assert {"ce", "ce_adv", "penalty", "reg_boundary_l1", "reg_decision_linf"} <= out.logs.keys()
    with pytest.raises(ValueError, match="clean points"):
        UniversalAdversarialTraining(eps=0.1, steps=5, adv_fraction=1.0, **kwargs)


# ---- configs and train.py ----------------------------------------------------------------------

def test_scheme_configs_take_eps_and_steps_from_the_dataset(tmp_path):
    cfg = compose_train_config(["logger=none", "dataset=gts", "regularizer=at_union"], tmp_path)
    reg = instantiate(cfg.regularizer)
    assert reg.eps == {"l1": 3.0, "l2": 0.2, "linf": pytest.approx(4 / 255)} and reg.steps == 7
    expected = {"at_linf": (INF, 4 / 255), "at_l2": (2.0, 0.2), "kw_linf": (INF, 4 / 255), "kw_l2": (2.0, 0.2),
                "mmr_at_linf": (INF, 4 / 255), "mmr_at_l2": (2.0, 0.2)}
    for name, (p, eps) in expected.items():
        cfg = compose_train_config(["logger=none", "dataset=gts", f"regularizer={name}"], tmp_path)
        reg = instantiate(cfg.regularizer)
        assert (reg.p, reg.eps) == (p, pytest.approx(eps)), name
        if "at" in name:
            assert (reg.steps, reg.adv_fraction) == (7, 0.5)
    mnist = instantiate(compose_train_config(["logger=none", "regularizer=mmr_at_linf"], tmp_path).regularizer)
    assert (mnist.steps, mnist.mmr.lam, mnist.mmr.gamma_b, mnist.mmr.gamma_d) == (40, 0.5, 0.2, 0.2)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_trains_through_train_py_config(tmp_path, scheme):
    overrides = ["logger=none", f"regularizer={scheme}", "datamodule.limit_train=256", "datamodule.limit_test=128",
                 "batch_size=64", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false"]
    if scheme.startswith("kw_") or "ibp" in scheme:
        # bound propagation through cnn_small costs seconds per batch on 2 cores: a small MLP here
        overrides += ["model=mlp", "model.widths=[32]"]
    metrics = train(compose_train_config(overrides, tmp_path))
    # the checkpoint holds this scheme's net, and the logged test error is that net's error
    net, run = load_checkpoint(metrics["checkpoint"])
    assert run["regularizer"] == scheme
    x, y = (t[:128] for t in load_mnist5k("test").tensors)
    with torch.no_grad():
        wrong = int((net(x).argmax(1) != y).sum())
    assert metrics["test/error"] == pytest.approx(wrong / 128, abs=1e-6)
    # the logged terms make up the trained objective (epoch means over the same batches)
    logged = {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")}
    close = functools.partial(pytest.approx, rel=1e-5)
    if scheme == "none":
        assert logged["loss"] == close(logged["ce"]) and "penalty" not in logged
    if scheme.startswith("mmr") or scheme == "universal":  # eqs (16), (17): CE + penalty
        assert logged["penalty"] > 0 and logged["loss"] == close(logged["ce"] + logged["penalty"])
    if "at" in scheme.split("_"):  # the adversarial half has a higher loss than the clean batch
        assert logged["ce_adv"] > logged["ce_clean"]
    if scheme == "at_union":
        assert sum(logged[f"won_{n}"] for n in ("l1", "l2", "linf")) == pytest.approx(1.0)
    if scheme.startswith("kw_"):  # the robust CE at the first epoch's radius, eps / 10
        assert logged["loss"] == close(logged["robust_ce"]) and logged["robust_ce"] >= logged["ce_clean"]
        assert logged["eps"] == close({"kw_linf": 0.1, "kw_l2": 0.3}[scheme] / 10)
        assert logged["robust_error"] >= logged["error"]  # a certified point is classified correctly


# ---- the defining effects after a short run ----------------------------------------------------
# mnist5k, the first 1000 training points, 3 epochs, an MLP with 100 hidden units, the same seed for
# every scheme; evaluated on the first 300 test points. Measured with seeds 0, 1, 2: PGD-l_inf error
# plain 0.59/0.66/0.63 vs AT 0.46/0.45/0.47; not certified at l_inf 0.1 (CROWN) plain 0.86/0.88/0.89
# vs KW 0.55/0.52/0.54; worst case over the three norms plain 0.59/0.66/0.63 vs union 0.48/0.45/0.46.

EPOCHS, N_TRAIN, N_TEST = 3, 1000, 300


def fit(reg, seed=0):
    train_set = load_mnist5k("train")
    x, y = train_set.tensors[0][:N_TRAIN], train_set.tensors[1][:N_TRAIN]
    torch.manual_seed(seed)
    net = mlp((1, 28, 28), 10, (100,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for epoch in range(EPOCHS):
        reg.on_epoch_start(epoch, EPOCHS)
        for idx in torch.randperm(N_TRAIN).split(64):
            loss = reg.training_loss(net, x[idx], y[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


@pytest.fixture(scope="module")
def test_points():
    test_set = load_mnist5k("test")
    return test_set.tensors[0][:N_TEST], test_set.tensors[1][:N_TEST]


@pytest.fixture(scope="module")
def plain_net():
    return fit(Regularizer())


def pgd_fooled(net, x, y, eps, p):
    torch.manual_seed(1)
    x_adv = pgd(net, x, y, eps, p, steps=20)
    with torch.no_grad():
        return net(x_adv).argmax(1) != y


@pytest.mark.slow
def test_at_linf_lowers_the_pgd_linf_error(plain_net, test_points):
    at = fit(AdversarialTraining(eps=0.1, p=INF, steps=10))
    plain_err, at_err = (pgd_fooled(net, *test_points, 0.1, INF).float().mean() for net in (plain_net, at))
    assert at_err < plain_err - 0.08, (at_err, plain_err)


@pytest.mark.slow
def test_kw_linf_certifies_more_points(plain_net, test_points):
    kw = fit(BoundTraining(eps=0.1, p=INF, eps_warmup_epochs=2))
    plain_ub, kw_ub = (1 - certify(net, *test_points, 0.1, INF, "crown").float().mean() for net in (plain_net, kw))
    assert kw_ub < plain_ub - 0.2, (kw_ub, plain_ub)


@pytest.mark.slow
def test_union_at_lowers_the_worst_case_error_over_three_norms(plain_net, test_points):
    # At MNIST's radii l_inf gives the highest loss for nearly every point (measured: > 99% of the
    # picks), so this is close to AT-l_inf; the per-example choice itself is tested above.
    union = fit(UnionAdversarialTraining(UNION_EPS, steps=5))

    def worst_case(net):  # a point counts if the attack of any norm fools it
        fooled = [pgd_fooled(net, *test_points, UNION_EPS[name], name[1:]) for name in ("l1", "l2", "linf")]
        return torch.stack(fooled).any(0).float().mean()

    plain_lb, union_lb = worst_case(plain_net), worst_case(union)
    assert union_lb < plain_lb - 0.08, (union_lb, plain_lb)
