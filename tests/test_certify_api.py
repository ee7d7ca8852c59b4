"""mmru.certify: the same certificates for a PyTorch model, its ONNX export and a native ReLUNet."""

import dataclasses
import subprocess
import sys

import pytest
import torch
from test_convert import Standardize, _bn, _export, conv_model
from torch import nn

import mmru
from mmru.certification.records import ATTACKED, CERTIFIED
from mmru.convert import from_onnx, from_torch
from mmru.errors import ConfigError

SHAPE = (2, 8, 8)
EPS = {"l1": 0.4, "l2": 0.15, "linf": 0.03}


def _points(model, n=6):
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(n, *SHAPE, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 3  # one misclassified point
    return x, y


def _certify(net, x, y):
    torch.manual_seed(0)  # the attacks start at random points
    return mmru.certify(net, x, y, EPS, attack="fast", mip=True, mip_time_limit=60.0)


def _without_seconds(records):
    return [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in records]


def test_torch_onnx_and_native_paths_give_identical_records(tmp_path, one_thread):
    model = conv_model()
    x, y = _points(model)
    from_module = _certify(model, x, y)
    onnx_file = str(_export(model, SHAPE, tmp_path / "model.onnx", fold=False))  # mmru.certify reads it
    native = from_torch(model, SHAPE)  # a ReLUNet, as train.py writes them, exported and read back
    round_trip = from_onnx(_export(native, SHAPE, tmp_path / "native.onnx"))
    expected = _without_seconds(from_module.records)
    assert _without_seconds(_certify(onnx_file, x, y).records) == expected
    assert _without_seconds(_certify(round_trip, x, y).records) == expected
    assert _without_seconds(_certify(native, x, y).records) == expected
    statuses = {r.status for r in from_module.records}
    assert CERTIFIED in statuses and len(statuses) > 1  # not vacuous: some certified, some not
    assert len(from_module.records) == len(x) * len(EPS)


def test_exact_mip_gives_the_same_verdicts_on_the_torch_and_onnx_imports(tmp_path, one_thread):
    """Normalisation, padded conv, BatchNorm, AvgPool: the MIPs over the (z, -z) layer and the
    folded weights solve alike (each in well under a second, far below the time limit)."""
    torch.manual_seed(0)
    model = nn.Sequential(Standardize([0.5], [0.25]), nn.Conv2d(1, 2, 3, padding=1), _bn(nn.BatchNorm2d(2)),
                          nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(18, 8), _bn(nn.BatchNorm1d(8)),
                          nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 3
    eps = {"l1": 0.6, "linf": 0.1}
    runs = [mmru.certify(net, x, y, eps, attack="none", mip=True, mip_time_limit=60.0).records
            for net in (model, str(_export(model, (1, 6, 6), tmp_path / "small.onnx", fold=False)))]
    assert _without_seconds(runs[0]) == _without_seconds(runs[1])
    assert sum(r.certified_by == "mip" for r in runs[0]) >= 2


def test_summary_counts_the_records(one_thread):
    model = conv_model()
    x, y = _points(model)
    records, summary = mmru.certify(model, x, y, {"linf": 0.03, "l2": 0.15}, attack="none", mip=False)
    assert [r.norm for r in records[:1]] == ["l2"] and {r.index for r in records} == set(range(len(x)))
    for norm in ("l2", "linf"):
        mine = [r for r in records if r.norm == norm]
        assert summary[norm]["certified"] == sum(r.status == CERTIFIED for r in mine)
        assert summary[norm]["attacked"] == sum(r.status == ATTACKED for r in mine) >= 1  # the misclassified point
    assert summary["test_error"] == pytest.approx(1 / len(x))
    assert summary["n_points"] == len(x)


def test_certified_points_resist_perturbations_of_the_original_model(one_thread):
    """eps is in pixel space: the normalisation inside the model is folded into the net, not into eps."""
    model = conv_model()
    x, y = _points(model)
    records, _ = mmru.certify(model, x, y, {"linf": 0.03}, attack="none", mip=False)
    gen = torch.Generator().manual_seed(5)
    certified = [r.index for r in records if r.status == CERTIFIED]
    assert certified
    for i in certified:
        corners = torch.randint(0, 2, (256, *SHAPE), generator=gen) * 0.06 - 0.03  # vertices of the l∞ ball
        with torch.no_grad():
            assert (model((x[i] + corners).clamp(0, 1)).argmax(1) == y[i]).all()


@pytest.mark.parametrize("kwargs, words", [
    ({"eps": {"l3": 0.1}}, "eps must map"),
    ({"eps": {"linf": -0.1}}, "eps['linf'] must be a positive"),
    ({"eps": {"linf": float("nan")}}, "eps['linf'] must be a positive"),
    ({"bounds": ("kw", "deeppoly")}, "bounds must be"),
    ({"bounds": "crown"}, "bounds must be"),
    ({"attack": "medium"}, "attack must be one of"),
    ({"mip": "yes"}, "mip must be True or False"),
    ({"mip_time_limit": 0}, "mip_time_limit must be"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"x": torch.rand(2, *SHAPE) * 2}, "box [0, 1]"),
    ({"x": torch.rand(2, 3, 8, 8)}, "does not run on inputs of shape [3, 8, 8]"),
    ({"y": torch.tensor([0.0, 1.0])}, "integer tensor of 2 labels"),
    ({"y": torch.tensor([0, 7])}, "label 7"),
])
def test_bad_arguments_are_refused_in_one_sentence(kwargs, words):
    args = {"net": conv_model(), "x": torch.rand(2, *SHAPE), "y": torch.tensor([0, 1]), "eps": {"linf": 0.1}, **kwargs}
    with pytest.raises(Exception) as err:
        mmru.certify(**args)
    assert isinstance(err.value, (ConfigError, mmru.convert.ConversionError)), err.value
    assert words in str(err.value) and "\n" not in str(err.value)


def test_import_mmru_stays_light():
    code = ("import sys, mmru; assert 'mmru.certification.cascade' not in sys.modules; mmru.certify; "
            "assert 'mmru.certification.cascade' in sys.modules; "
            "assert not {'lightning', 'pytorch_lightning', 'hydra'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
