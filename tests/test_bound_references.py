"""Tightness: every bound of mmru.verify equals an independent dense reference of its own
relaxation (``bound_reference``), unit by unit, so a bound that turns looser but stays sound
fails here even though every soundness test still passes.

Compared per example: every hidden layer's and the logits' lower and upper bounds and the
margin bounds f_y - f_s, for IBP, KW, CROWN ∩ KW and CROWN alone, over l_1, l_2 and l_inf
balls with and without the [0, 1] box, on random MLPs and conv nets (patch path included)
and on the published MNIST model; and the certificates built on them.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bound_reference as ref
from mmru.convert import from_mat
from mmru.models import ReLUNet, cnn_small, mlp
from mmru.verify import certify, layer_bounds, margin_lower_bounds, rounding_tolerance
from mmru.verify.bounds import hidden_bounds, input_ball
from tiny_nets import through_the_box

INF = math.inf
BOXES = {"box": (0.0, 1.0), "nobox": None}
#: per-example radii, small to large
RADII = {1.0: [0.3, 1.0, 2.5], 2.0: [0.1, 0.4, 1.0], INF: [0.02, 0.08, 0.2]}
#: mmru (float64) and the reference round differently; measured differences are <= 2e-13
TOL = 1e-6
#: every method as (layer_bounds method, intersect); "crown_raw" is CROWN's own pass alone
METHODS = {"ibp": ("ibp", True), "kw": ("kw", True), "crown": ("crown", True), "crown_raw": ("crown", False)}

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_net() -> ReLUNet:
    """A padded bias-free strided conv, an unpadded conv and two linear layers on 1x6x6."""
    layers = [nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=False), nn.Conv2d(3, 4, 2), nn.Linear(16, 5),
              nn.Linear(5, 3)]
    return ReLUNet(layers, (1, 6, 6))


def _nets() -> dict[str, ReLUNet]:
    torch.manual_seed(0)
    nets = {f"mlp{seed}": through_the_box(mlp((6,), 3, (8, 8, 6)).double(), seed) for seed in range(3)}
    nets["conv"] = through_the_box(_conv_net().double(), 5)
    # cnn_small's layers on 7x7: windows overhang the border and drop a row
    nets["cnn_small_7x7"] = through_the_box(cnn_small((1, 7, 7), 3).double(), 6)
    return nets


NETS = _nets()
DENSE = {name: ref.dense_layers(net) for name, net in NETS.items()}


def _close(got: torch.Tensor, want: np.ndarray, what) -> None:
    """max |got - want| <= TOL: absolute, relative to max |want| where that exceeds 1 (the
    published model's logit bounds reach ~100)."""
    diff = float(np.abs(got.detach().numpy() - want).max())
    assert diff <= TOL * max(1.0, float(np.abs(want).max())), (what, diff, got, want)


def _compare(net, dense, x, y, eps, p, box, methods=METHODS) -> None:
    """Every bound mmru gives for x [B, ...] (eps a float or [B]) against the reference."""
    eps_b = eps if torch.is_tensor(eps) else torch.full((len(x),), float(eps), dtype=torch.float64)
    refs = [ref.reference(dense, x[b].flatten().numpy(), int(y[b]), float(eps_b[b]), p, box, "crown_raw" in methods)
            for b in range(len(x))]
    for name in methods:
        method, intersect = METHODS[name]
        with torch.no_grad():
            layers = layer_bounds(net, x, eps, p, method, box, intersect)
            margins = margin_lower_bounds(net, x, y, eps, p, method, box, intersect)
        for b, r in enumerate(refs):
            assert len(layers) == len(r[name])
            for k, ((lo, hi), (rlo, rhi)) in enumerate(zip(layers, r[name])):
                _close(lo[b], rlo, (name, b, k, "lower"))
                _close(hi[b], rhi, (name, b, k, "upper"))
            _close(margins[b], r[name + "_margin"], (name, b, "margin"))


@pytest.mark.parametrize("box", list(BOXES))
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
@pytest.mark.parametrize("name", list(NETS))
def test_bounds_equal_the_dense_reference(name, p, box):
    net, dense = NETS[name], DENSE[name]
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, *net.input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(net.num_classes, (3,), generator=gen)
    _compare(net, dense, x, y, torch.tensor(RADII[p], dtype=torch.float64), p, BOXES[box])


def test_the_reference_cases_exercise_every_rule():
    """Not vacuous: the cases hold unstable units deeper than the first layer with both of
    CROWN's lower slopes, CROWN ∩ KW taking each side, and a box and Hoelder bound that each
    win somewhere (so a change to any of these rules moves some compared bound)."""
    counts = dict.fromkeys(("slope0", "slope1", "kw_wins", "crown_wins", "box_wins", "hoelder_wins"), 0)
    for name, net in NETS.items():
        x = torch.rand(3, *net.input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        for p in (1.0, 2.0, INF):
            eps = torch.tensor(RADII[p], dtype=torch.float64)
            with torch.no_grad():
                kw, crown = layer_bounds(net, x, eps, p, "kw"), layer_bounds(net, x, eps, p, "crown", intersect=False)
            for lo, hi in crown[1:-1]:
                unstable = (lo < 0) & (hi > 0)
                counts["slope1"] += int((unstable & (hi >= -lo)).sum())
                counts["slope0"] += int((unstable & (hi < -lo)).sum())
            for (kl, ku), (cl, cu) in zip(kw[1:], crown[1:]):
                counts["kw_wins"] += int((kl > cl + 1e-9).sum() + (ku < cu - 1e-9).sum())
                counts["crown_wins"] += int((cl > kl + 1e-9).sum() + (cu < ku - 1e-9).sum())
            if p != INF:  # the first layer's rows over the largest ball
                centre, radius, rows = x[2].flatten().numpy(), float(eps[2]), DENSE[name][0].w
                box_only = ref.InputSet(centre, radius, INF, (0.0, 1.0)).minimum(rows)
                hoelder_only = ref.InputSet(centre, radius, p, None).minimum(rows)
                counts["box_wins"] += int((box_only > hoelder_only + 1e-9).sum())
                counts["hoelder_wins"] += int((hoelder_only > box_only + 1e-9).sum())
    assert all(v > 0 for v in counts.values()), counts


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_scalar_radius_and_one_example(p):
    """The scalar-eps path and a batch of one give the reference's bounds too."""
    net, dense = NETS["cnn_small_7x7"], DENSE["cnn_small_7x7"]
    x = torch.rand(1, *net.input_shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _compare(net, dense, x, torch.tensor([1]), RADII[p][1], p, (0.0, 1.0))


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_certificates_flip_exactly_at_the_reference_margin(p):
    """``certify`` holds iff every margin bound exceeds the rounding tolerance: with the bias
    of the label's logit moved so that the reference's smallest margin bound is that tolerance
    +- 1e-8 (the bias enters every margin bound additively, no hidden bound), it certifies on
    the + side only, for every method."""
    for name in ("mlp0", "conv"):
        base = NETS[name]
        x = torch.rand(3, *base.input_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        with torch.no_grad():
            y = base(x).argmax(1)
        eps = RADII[p][1]
        for b in range(len(x)):
            xb, yb = x[b : b + 1], y[b : b + 1]
            for method in ("ibp", "kw", "crown"):
                margins = ref.reference(DENSE[name], xb.flatten().numpy(), int(yb), eps, p, raw=False)
                smallest = np.delete(margins[method + "_margin"], int(yb)).min()
                for side in (1.0, -1.0):
                    net = copy.deepcopy(base)
                    with torch.no_grad():
                        net.layers[-1].bias[yb] -= smallest  # smallest margin bound now ~0
                        ball = input_ball(xb, eps, p)
                        tol = float(rounding_tolerance(net, ball, hidden_bounds(net, ball, method))[0])
                        net.layers[-1].bias[yb] += tol + side * 1e-8
                        assert bool(certify(net, xb, yb, eps, p, method)) == (side > 0), (name, b, method, side)


ROOT = Path(__file__).resolve().parents[1]
MNIST_MODEL = ROOT / "zoo" / "croce-hein-2020" / "mmr_univ_mnist.mat"
DATA = Path(os.environ.get("MMRU_DATA_DIR", ROOT / "data"))


def _mnist_points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n official MNIST test images (pixels / 255) and labels, read from the idx files."""
    raw = DATA / "MNIST" / "raw"
    images, labels = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
    if not (images.is_file() and labels.is_file()):
        pytest.skip(f"the official MNIST test files are not in {raw}; `make data` places them")
    pixels = np.frombuffer(images.read_bytes(), dtype=np.uint8, offset=16, count=n * 784)
    y = np.frombuffer(labels.read_bytes(), dtype=np.uint8, offset=8, count=n)
    return torch.from_numpy(pixels.reshape(n, 1, 28, 28) / 255.0), torch.from_numpy(y.astype(np.int64))


@pytest.mark.parametrize("p, eps, points", [(INF, 0.1, slice(0, 2)), (2.0, 0.3, slice(2, 3))])
def test_published_mnist_model_equals_the_reference(p, eps, points):
    """The authors' MNIST model (Table 1) on the first three test points at the paper's radii:
    IBP, KW and CROWN ∩ KW, on every one of the 4,804 hidden units, the logits and the margins."""
    x, y = (t[points] for t in _mnist_points(3))
    net = from_mat(MNIST_MODEL, dtype=torch.float64)
    _compare(net, ref.dense_layers(net), x, y, eps, p, (0.0, 1.0), methods=("ibp", "kw", "crown"))
