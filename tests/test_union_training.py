"""Certified training for the union of the l1, l2, l_inf balls (issue 10 §3): the training bounds
against mmru.verify and against points of the balls, the schedules, the objectives, and the
effect of each scheme on the union-certified fraction after a short run through train.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmru.attacks import pgd
from mmru.attacks.geometry import snap_to_ball
from mmru.certification.checkpoint import load_checkpoint
from mmru.data import load_mnist5k
from mmru.models import ReLUNet, cnn_small, mlp
from mmru.regularizers.ibp_union import CROWNIBPUnion, IBPUnion, LinearRamp, union_margins
from mmru.regularizers.union_bounds import crown_lower, first_layer_bounds, ibp_hidden_bounds, margin_bounds
from mmru.regularizers.universal import MMRUniversal
from mmru.regularizers.universal_ibp import UniversalIBP
from mmru.training import compose_train_config, train
from mmru.verify import LpBall, certify, margin_lower_bounds
from mmru.verify.bounds import hidden_bounds, margin_spec
from mmru.verify.linear_bounds import backsubstitute, layer_bounds_by_backsubstitution
from mmru.verify.relaxation import relax
from tiny_nets import through_the_box

INF = math.inf
NORMS = {"l1": 1.0, "l2": 2.0, "linf": INF}
EPS = {"l1": 0.5, "l2": 0.3, "linf": 0.1}


def _nets() -> dict[str, ReLUNet]:
    torch.manual_seed(0)
    conv = ReLUNet([nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=False), nn.Conv2d(3, 4, 2), nn.Linear(16, 3)],
                   (1, 6, 6))
    return {
        "mlp": through_the_box(mlp((5,), 3, (8, 8)).double(), 0),
        "conv": through_the_box(conv.double(), 1),
        # cnn_small's layers on 7x7: its windows overhang the border and drop a row
        "cnn_small_7x7": through_the_box(cnn_small((1, 7, 7), 3).double(), 2),
        "linear": through_the_box(mlp((5,), 3, ()).double(), 3),
    }


NETS = _nets()


def _inputs(net: ReLUNet, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.input_shape, generator=gen, dtype=torch.float64)
    return x, torch.arange(n) % net.num_classes


# ---- the training bounds are mmru.verify's, computed faster ----------------------------------

def _chw(net: ReLUNet, k: int, t: torch.Tensor) -> torch.Tensor:
    """Training bounds on layer k's output, kept in (H, W, C) order for a conv, -> mmru.verify's (C, H, W)."""
    shape = net.layer_shapes[k]
    if len(shape) != 3:
        return t
    c, h, w = shape
    return t.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(t.shape)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["mlp", "conv", "cnn_small_7x7"])
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_training_bounds_equal_mmru_verify(name, p):
    net = NETS[name]
    x, y = _inputs(net)
    with torch.no_grad():
        ball = LpBall(x.flatten(1), 0.3, p)
        for mine, ref in zip(first_layer_bounds(net, ball), layer_bounds_by_backsubstitution(net, 0, ball, [])):
            torch.testing.assert_close(_chw(net, 0, mine), ref, rtol=0, atol=1e-12)
        ibp = margin_lower_bounds(net, x, y, 0.3, p, method="ibp")
        torch.testing.assert_close(margin_bounds(net, x, y, 0.3, p), ibp, rtol=0, atol=1e-12)
        hidden = hidden_bounds(net, ball, "ibp")["ibp"]
        assert len(hidden) == len(net.layers) - 1
        for k, (mine, ref) in enumerate(zip(ibp_hidden_bounds(net, ball), hidden)):
            torch.testing.assert_close(_chw(net, k, mine[0]), ref[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(_chw(net, k, mine[1]), ref[1], rtol=0, atol=1e-12)
        spec = margin_spec(y, net.num_classes, x.dtype)
        reference = backsubstitute(net, len(net.layers) - 1, spec, ball, [relax(b, adaptive=True) for b in hidden])[0]
        torch.testing.assert_close(crown_lower(net, spec, ball, ibp_hidden_bounds(net, ball)), reference,
                                   rtol=0, atol=1e-12)


# ---- soundness: no point of a ball beats its bound --------------------------------------------

def _ball_points(x: torch.Tensor, eps: float, p: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n random points per centre in the l_p ball ∩ [0, 1]^d (on the sphere and inside), [n, B, d]."""
    flat = x.flatten(1)
    u = torch.randn(n, *flat.shape, generator=gen, dtype=flat.dtype)
    if p == INF:
        u = u.sign()  # the cube's vertices
    else:
        u = u / torch.linalg.vector_norm(u, ord=p, dim=-1, keepdim=True)
        u = u * torch.rand(n, flat.shape[0], 1, generator=gen, dtype=u.dtype).sqrt()
    # clipping to the box never moves a point further from a centre inside the box
    return (flat + eps * u).clamp(0.0, 1.0)


def _true_margins(net: ReLUNet, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f_y - f_s at points [n, B, d], [n, B, K]."""
    with torch.no_grad():
        logits = net(points.reshape(-1, *net.input_shape)).reshape(*points.shape[:2], -1)
    return logits.gather(2, y.view(1, -1, 1).expand(points.shape[0], -1, 1)) - logits


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(NETS))
def test_union_bounds_hold_at_sampled_and_attacked_points(name):
    net = NETS[name]
    x, y = _inputs(net)
    gen = torch.Generator().manual_seed(2)
    for beta in (0.0, 0.5, 1.0):
        with torch.no_grad():
            per_norm = union_margins(net, x, y, EPS, beta)
        for norm, p in NORMS.items():
            points = [_ball_points(x, EPS[norm], p, 300, gen)]
            torch.manual_seed(3)
            attacked = pgd(copy.deepcopy(net).float(), x.float(), y, EPS[norm], p, steps=20)
            # the float32 attack may overshoot the float64 ball by rounding: snap it inside
            points.append(snap_to_ball(x, attacked.double(), EPS[norm], p).flatten(1)[None])
            for pts in points:
                assert (_true_margins(net, pts, y) >= per_norm[norm] - 1e-9).all(), (norm, beta)
            assert (per_norm[norm].gather(1, y[:, None]) == 0).all()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("widths", [(32,), (16, 12)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crown_ibp_is_tighter_than_ibp_at_the_last_layer(seed, widths):
    # CROWN-IBP is not tighter margin by margin in theory (a unit with u >= -l gets the lower
    # line z, below relu's box bound 0); on these nets (measured: >= 95.8% of the margins, mean
    # gain >= 20% of |IBP|) it is, and much tighter on average, as Zhang et al. 2020 found at
    # initialisation
    torch.manual_seed(seed)
    net = mlp((1, 6, 6), 4, widths).double()
    x, y = _inputs(net, 32, seed)
    with torch.no_grad():
        for norm, p in NORMS.items():
            ibp, crown = (margin_bounds(net, x, y, EPS[norm], p, beta) for beta in (0.0, 1.0))
            others = torch.ones_like(ibp, dtype=torch.bool).scatter(1, y[:, None], False)
            gain = (crown - ibp)[others]
            assert (gain >= -1e-12).float().mean() >= 0.95, norm
            assert gain.mean() > 0.15 * ibp[others].abs().mean(), norm


# ---- schedules and objectives -----------------------------------------------------------------

def test_ramps_hold_during_warmup_then_move_linearly_per_step():
    ramp = LinearRamp(1.0, 0.5, warmup=1.0, ramp=4.0)
    assert [ramp(t) for t in (0.0, 0.99, 1.0, 2.0, 3.5, 5.0, 9.0)] == pytest.approx([1, 1, 1, 0.875, 0.6875, 0.5, 0.5])
    assert LinearRamp(0.0, 1.0, warmup=2.0, ramp=0.0)(2.0) == 1.0

    reg = CROWNIBPUnion(EPS, warmup_epochs=1.0, ramp_epochs=4.0)
    assert reg.schedule() == {"eps_factor": 1.0, "kappa": 0.5, "beta": 0.0}  # before any call: ramps done
    assert reg.on_epoch_start(0, 10) == {"eps_factor": 0.0, "kappa": 1.0, "beta": 1.0}
    reg.on_step_start(2.0)  # a quarter of the ramp
    assert reg.schedule() == pytest.approx({"eps_factor": 0.25, "kappa": 0.875, "beta": 0.75})
    with pytest.raises(ValueError, match="each of l1, l2, linf"):
        IBPUnion({"l2": 0.3, "linf": 0.1})
    with pytest.raises(ValueError, match="kappa"):
        IBPUnion(EPS, kappa_end=1.5)
    with pytest.raises(ValueError, match="beta"):
        CROWNIBPUnion(EPS, beta_start=-0.1)


def test_losses_mix_clean_and_worst_case_robust_cross_entropy():
    torch.manual_seed(0)
    net = mlp((1, 6, 6), 4, (16, 12))
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 4, (8,))
    half = {n: r / 2 for n, r in EPS.items()}

    reg = IBPUnion(EPS, warmup_epochs=1.0, ramp_epochs=2.0)
    reg.on_step_start(2.0)  # eps_factor 0.5, kappa 0.75
    out = reg.training_loss(net, x, y)
    worst = torch.stack(list(union_margins(net, x, y, half).values())).amin(0)
    clean = F.cross_entropy(net(x), y)
    torch.testing.assert_close(out.loss, 0.75 * clean + 0.25 * F.cross_entropy(-worst, y))
    assert {"ce_clean", "robust_ce", "robust_error", "robust_error_l1", "robust_error_l2", "robust_error_linf",
            "eps_factor", "kappa"} <= out.logs.keys()
    assert out.logs["robust_error"] >= max(out.logs[f"robust_error_{n}"] for n in NORMS)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())

    crown = CROWNIBPUnion(EPS, warmup_epochs=1.0, ramp_epochs=2.0)
    crown.on_step_start(2.0)  # beta 0.5
    mixed = torch.stack(list(union_margins(net, x, y, half, beta=0.5).values())).amin(0)
    torch.testing.assert_close(crown.training_loss(net, x, y).loss, 0.75 * clean + 0.25 * F.cross_entropy(-mixed, y))

    kwargs = dict(lambda_1=3.0, lambda_inf=12.0, gamma_1=1.0, gamma_inf=0.15, k_b_start=0.2, k_b_end=0.05)
    both, mmr = UniversalIBP(eps=EPS, warmup_epochs=1.0, ramp_epochs=2.0, **kwargs), MMRUniversal(**kwargs)
    assert both.on_epoch_start(2, 10) == {**mmr.on_epoch_start(2, 10), "eps_factor": 0.5, "kappa": 0.75}
    out = both.training_loss(net, x, y)
    torch.testing.assert_close(out.loss, reg.training_loss(net, x, y).loss + mmr.penalty(net, x, y)[0])
    assert {"robust_ce", "kappa", "reg_boundary_l1", "reg_decision_linf", "penalty", "ibp_loss"} <= out.logs.keys()


# ---- the effect, through train.py: more points certified for the union -----------------------
# mnist5k, the first 1000 training points, 3 epochs of batch 64, an MLP with 100 hidden units, seed 0
# (warm-up 0.5 epoch, ramp over 1.5), MNIST's radii; certified on the first 300 test points for the
# union of the three balls, a point counting when IBP or CROWN certifies each ball. l1 and l2 are
# certified about as often as points are classified right by every net here: l_inf decides.
# Measured through train.py: plain 0.093, ibp_union 0.313, crown_ibp_union 0.330, universal_ibp 0.183
# (MMR-Universal's penalty, at lambda / 10 .. 3 lambda / 10 of its 10-epoch ramp, costs l_inf
# certificates on so short a run), hence the smaller margin asserted for it.

TRAIN = ["logger=none", "model=mlp", "model.widths=[100]", "datamodule.limit_train=1000", "batch_size=64",
         "datamodule.limit_test=100", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "lr=1e-3", "seed=0"]
RAMP = ["regularizer.warmup_epochs=0.5", "regularizer.ramp_epochs=1.5"]
TEST_EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}  # conf/dataset/mnist5k.yaml
N_TEST = 300


def _union_certified(net: ReLUNet) -> float:
    test = load_mnist5k("test")
    x, y = test.tensors[0][:N_TEST], test.tensors[1][:N_TEST]
    certified = torch.ones(N_TEST, dtype=torch.bool)
    for norm, p in NORMS.items():
        certified &= certify(net, x, y, TEST_EPS[norm], p, "ibp") | certify(net, x, y, TEST_EPS[norm], p, "crown")
    return certified.float().mean().item()


def _fit(tmp_path, name: str, overrides: list[str]) -> tuple[float, dict]:
    metrics = train(compose_train_config([*TRAIN, *overrides], tmp_path / name))
    net, _ = load_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")
    return _union_certified(net), metrics


@pytest.fixture(scope="module")
def plain_certified(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("plain"), "plain", ["regularizer=none"])[0]


@pytest.mark.slow
@pytest.mark.parametrize("scheme, logged, margin", [
    ("ibp_union", ["robust_ce", "robust_error_l1", "kappa", "eps_factor"], 0.12),
    ("crown_ibp_union", ["robust_ce", "robust_error_linf", "kappa", "beta"], 0.12),
    ("universal_ibp", ["robust_ce", "kappa", "reg_boundary_l1", "penalty"], 0.05),
])
def test_each_scheme_certifies_more_points_for_the_union(tmp_path, plain_certified, scheme, logged, margin):
    # universal_ibp keeps MMR-Universal's 10-epoch lambda ramp: lambda / 10 .. 3 lambda / 10 here
    certified, metrics = _fit(tmp_path, scheme, [f"regularizer={scheme}", *RAMP])
    assert all(math.isfinite(metrics[f"train/{name}"]) for name in logged)
    print(f"{scheme}: union certified {certified:.3f} vs plain {plain_certified:.3f}")
    assert certified > plain_certified + margin, (certified, plain_certified)
