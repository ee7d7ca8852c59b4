"""Importing models trained elsewhere: exact equality with the original, and clear refusals."""

import copy
import os
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import Normalize

from mmru.convert import ConversionError, from_onnx, from_torch, load_model
from mmru.errors import UserError
from mmru.models import ReLUNet, cnn_small


class Standardize(nn.Module):
    """(x - mean) / std per channel, as many training scripts put it in front of the model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class FunctionalNet(nn.Module):
    """Functional calls and x.view(x.size(0), -1), the other common way to write a forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2)
        self.fc = nn.Linear(3 * 3 * 3, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = F.relu(self.conv(x * 2.0 - 1.0))
        x = x.view(x.size(0), -1)
        return self.fc(self.drop(torch.flatten(x, 1)))


def _bn(bn):
    """Running statistics and affine parameters far from the identity, so folding them matters."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.3, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    return bn


def conv_model():
    """Normalisation before a padded conv, BatchNorm before and after ReLUs, AvgPool, Dropout."""
    torch.manual_seed(0)
    return nn.Sequential(
        Standardize([0.4, 0.5], [0.2, 0.3]), nn.Conv2d(2, 4, 3, padding=1), _bn(nn.BatchNorm2d(4)), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(), _bn(nn.BatchNorm2d(5)),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(5 * 2 * 2, 7), _bn(nn.BatchNorm1d(7)), nn.ReLU(), nn.Identity(),
        nn.Linear(7, 3),
    ).eval()


def mlp_model():
    """torchvision's Normalize (constants exact in float32, as ONNX stores them), BatchNorm1d, Dropout."""
    torch.manual_seed(1)
    return nn.Sequential(Normalize([0.25], [0.375]), nn.Flatten(), nn.Linear(36, 12), _bn(nn.BatchNorm1d(12)),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 5)).eval()


def functional_model():
    torch.manual_seed(2)
    return FunctionalNet().eval()


def pool_first_model():
    """Average pooling of the raw input: its own layer, as a (z, -z) pair since the input may be negative."""
    torch.manual_seed(3)
    return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 3)).eval()


def global_pool_model():
    """A torchvision-style head: global average pooling, then the classifier."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(6, 3)).eval()


def flat_batch_norm_model():
    """BatchNorm1d on flattened conv features: a scale per pixel, so the conv becomes a dense Linear."""
    torch.manual_seed(6)
    return nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Flatten(), _bn(nn.BatchNorm1d(8)), nn.ReLU(),
                         nn.Linear(8, 3)).eval()


MODELS = {"flat_batch_norm": (flat_batch_norm_model, (1, 5, 5)), "conv": (conv_model, (2, 8, 8)), "mlp": (mlp_model, (1, 6, 6)), "functional": (functional_model, (1, 7, 7)),
          "pool_first": (pool_first_model, (1, 6, 6)), "global_pool": (global_pool_model, (1, 6, 6))}


def _inputs(shape, n=64):
    """Points in the box and far outside it: the conversion is exact everywhere, not only on [0, 1]."""
    gen = torch.Generator().manual_seed(3)
    return torch.cat([torch.rand(n, *shape, generator=gen), 3 * torch.randn(n, *shape, generator=gen)]).double()


def _export(model, shape, path, fold=True):
    """Legacy exporter (dynamo=False): fast and needs no onnxscript; fold=False keeps BatchNormalization nodes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model).float(), (torch.rand(1, *shape),), str(path), dynamo=False,
                          do_constant_folding=fold)
    return path


@pytest.mark.parametrize("name", MODELS)
def test_from_torch_equals_the_original_in_float64(name, one_thread):
    build, shape = MODELS[name]
    model = build()
    net = from_torch(model, shape, dtype=torch.float64)
    assert isinstance(net, ReLUNet) and net.input_shape == shape
    x = _inputs(shape)
    with torch.no_grad():
        assert (net(x) - copy.deepcopy(model).double()(x)).abs().max() < 1e-9
        net32 = from_torch(model, shape)  # the default float32 net, as the cascade runs it
        assert (net32(x.float()) - model(x.float())).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["conv", "mlp", "pool_first", "global_pool"])
def test_onnx_import_equals_the_original_and_the_torch_import(name, tmp_path, one_thread):
    build, shape = MODELS[name]
    model = build()
    x = _inputs(shape)
    reference = copy.deepcopy(model).double()(x).detach()
    folded = from_onnx(_export(model, shape, tmp_path / "folded.onnx"), dtype=torch.float64)
    assert (folded(x) - reference).abs().max() < 1e-6  # the exporter fused BatchNorm in float32
    # with BatchNormalization nodes kept, the two importers fold the same float32 numbers alike
    kept = from_onnx(_export(model, shape, tmp_path / "kept.onnx", fold=False))
    native = from_torch(model, shape)
    for a, b in zip(kept.state_dict().values(), native.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_folding_is_exact_and_adds_layers_only_where_needed(one_thread):
    """conv_model: the normalisation before a padded conv needs its own (z, -z) layer, the
    AvgPool after a ReLU its own layer without a pair; every BatchNorm disappears."""
    net = from_torch(conv_model(), (2, 8, 8), dtype=torch.float64)
    kinds = [(type(layer).__name__, tuple(layer.weight.shape[:2])) for layer in net.layers]
    assert kinds == [("Conv2d", (4, 2)), ("Conv2d", (4, 4)), ("Conv2d", (4, 4)), ("Conv2d", (5, 4)),
                     ("Linear", (7, 20)), ("Linear", (3, 7))]
    # a ReLUNet comes back unchanged, and so does a plain chain of our own layers
    ours = cnn_small((1, 28, 28), 10)
    for net in (from_torch(ours, (1, 28, 28)), from_torch(nn.Sequential(*_unrolled(ours)), (1, 28, 28))):
        for a, b in zip(net.state_dict().values(), ours.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def _unrolled(net: ReLUNet):
    layers = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, nn.Linear) and not any(isinstance(m, nn.Flatten) for m in layers):
            layers.append(nn.Flatten())
        layers += [layer, nn.ReLU()] if i < len(net.layers) - 1 else [layer]
    return layers


def test_normalisation_before_an_unpadded_conv_folds_into_it(one_thread):
    model = nn.Sequential(Standardize([0.5], [0.2]), nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 2))
    net = from_torch(model.eval(), (1, 5, 5), dtype=torch.float64)
    assert len(net.layers) == 2
    x = _inputs((1, 5, 5))
    assert (net(x) - model.double()(x)).abs().max() < 1e-9


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) + x)


@pytest.mark.parametrize("model, words", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2)),
     ["'1'", "MaxPool2d", "max pooling"]),
    (nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Sigmoid(), nn.Linear(4, 2)), ["'2'", "Sigmoid", "not a ReLU"]),
    (Residual(), ["residual"]),
])
def test_unsupported_torch_layers_are_refused_by_name(model, words):
    shape = (4,) if isinstance(model, Residual) else (1, 4, 4)
    with pytest.raises(ConversionError) as err:
        from_torch(model.eval(), shape)
    message = str(err.value)
    assert all(w in message for w in words), message
    assert isinstance(err.value, UserError) and "\n" not in message


@pytest.mark.parametrize("layer, op", [(nn.MaxPool2d(2), "MaxPool"), (nn.Sigmoid(), "Sigmoid")])
def test_unsupported_onnx_operators_are_refused_by_name(layer, op, tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), layer, nn.Flatten(), nn.Linear(2 * (1 if op == "MaxPool" else 4), 2))
    path = _export(model.eval(), (1, 4, 4), tmp_path / "m.onnx")
    with pytest.raises(ConversionError, match=f"ONNX operator {op} "):
        from_onnx(path)


class _Payload:
    """Unpickling this runs code (it creates a file): what a tampered model file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_state_dicts_load_without_running_pickled_code(tmp_path):
    model = mlp_model()
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    net = load_model(good, mlp_model, (1, 6, 6))
    x = _inputs((1, 6, 6)).float()
    assert (net(x) - model(x)).abs().max() < 1e-4
    bad = tmp_path / "bad.pt"
    marker = tmp_path / "code-ran"
    torch.save({**model.state_dict(), "hook": _Payload(marker)}, bad)
    with pytest.raises(ConversionError, match="cannot be read safely"):
        load_model(bad, mlp_model, (1, 6, 6))
    assert not marker.exists()
    with open(marker.with_suffix(".pkl"), "wb") as fh:  # the check itself: plain unpickling does run it
        pickle.dump(_Payload(marker), fh)
    with open(marker.with_suffix(".pkl"), "rb") as fh:
        pickle.load(fh)
    assert marker.exists()
    with pytest.raises(ConversionError, match="package.module:function"):
        load_model(good, "no_colon", (1, 6, 6))
    assert isinstance(load_model(good, "test_convert:mlp_model", (1, 6, 6)), ReLUNet)


def test_an_onnx_model_on_flat_inputs_certifies_images(tmp_path):
    """VNN-COMP style: the file takes [1, 36] vectors with its own normalisation; mmru feeds [1, 6, 6] images."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    flat = nn.Sequential(Standardize([0.5], [0.25]), nn.Flatten(), model).eval()  # (x - 0.5) / 0.25 on [1, 1, 1, 36]
    path = _export(flat, (1, 1, 36), tmp_path / "flat.onnx")
    with pytest.raises(ConversionError, match=r"takes inputs of shape \[1, 1, 36\], not \[1, 5, 5\]"):
        from_onnx(path, input_shape=(1, 5, 5))
    net = from_onnx(path, dtype=torch.float64, input_shape=(1, 6, 6))
    x = _inputs((1, 6, 6))
    assert net.input_shape == (1, 6, 6) and (net(x) - flat.double()(x.reshape(-1, 1, 1, 36))).abs().max() < 1e-9
