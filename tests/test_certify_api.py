"""mmru.certify: the same certificates for a PyTorch model, its ONNX export and a native ReLUNet."""

import dataclasses
import subprocess
import sys

import pytest
import torch
from test_convert import Standardize, _bn, _export, conv_model
from torch import nn

import mmru
from mmru.certification.records import ATTACKED, CERTIFIED, load_records
from mmru.certification.runner import run_certification
from mmru.convert import from_onnx, from_torch
from mmru.errors import ConfigError, UserError
from mmru.models import mlp

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


def test_radii_are_asked_for_by_name(one_thread):
    """radii=True records each method's largest radius per point; the default records none."""
    model = conv_model()
    x, y = _points(model)
    plain, _ = mmru.certify(model, x, y, {"linf": 0.03}, attack="none", mip=False)
    with_radii, _ = mmru.certify(model, x, y, {"linf": 0.03}, attack="none", mip=False, radii=True)
    assert all(r.radii is None for r in plain)
    for r in with_radii:
        assert (r.radii is not None) and (not r.correct or r.radii["region"] == r.region_radius)
        assert r.certified_radius == max(r.radii.values(), default=0.0)


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
    ({"radii": "yes"}, "radii must be True or False"),
    ({"mip_workers": 0}, "mip_workers must be"),
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


def mnist_mlp():
    """The architecture of a model 'trained elsewhere' (arch=test_certify_api:mnist_mlp)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))


# The exact stage in l_inf only: the untrained net's l2 program for point 3 runs into any time limit,
# and a record decided by a timeout would make the three runs' equality depend on the machine.
CLI = ["n_points=8", "batch_size=8", "attack=none", "mip=true", "mip_norms=[linf]", "mip_time_limit=60",
       "wandb.enabled=false", "progress=false"]


def _cli(*overrides):
    from mmru.training import compose_config  # Hydra config composition, as certify.py does it

    return run_certification(compose_config("certify", [*CLI, *overrides]))


def test_cli_certifies_state_dicts_and_onnx_files_like_native_checkpoints(tmp_path, one_thread):
    """The same weights as train.py's checkpoint, as a state dict and as ONNX: identical records."""
    torch.manual_seed(6)
    native = mlp((1, 28, 28), 10, (16,))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    eps = {"l1": 1.0, "l2": 0.3, "linf": 0.1}  # mnist5k's, which model= takes from dataset=mnist5k
    torch.save({"hyper_parameters": {  # what certify.py reads of a train.py checkpoint
        "net_config": {"_target_": "mmru.models.mlp", "input_shape": [1, 28, 28], "num_classes": 10, "widths": [16]},
        "run_config": {"dataset": "mnist5k", "eps": eps, "seed": 0}},
        "state_dict": {f"net.{k}": v for k, v in native.state_dict().items()}}, ckpt)
    elsewhere = mnist_mlp()
    elsewhere.load_state_dict({k.replace("layers.0", "1").replace("layers.1", "3"): v
                               for k, v in native.state_dict().items()})
    torch.save(elsewhere.state_dict(), tmp_path / "state.pt")
    _export(elsewhere, (1, 28, 28), tmp_path / "exported.onnx")

    _cli(f"ckpt={ckpt}")
    _cli(f"model_file={tmp_path / 'exported.onnx'}", "dataset=mnist5k")
    _cli(f"model_file={tmp_path / 'state.pt'}", "arch=test_certify_api:mnist_mlp", "dataset=mnist5k")
    # output directories: the training run's, and one beside each model file named after it
    outputs = [tmp_path / "run" / "certify", tmp_path / "exported-certify", tmp_path / "state-certify"]
    runs = [_without_seconds(load_records(out / "points.jsonl")) for out in outputs]
    assert len(runs[0]) == 8 * 3 and runs[1] == runs[0] and runs[2] == runs[0]
    assert {r["status"] for r in runs[0]} >= {CERTIFIED}
    assert "mip" in {r["attacked_by"] for r in runs[0]} | {r["certified_by"] for r in runs[0]}  # the exact stage ran


@pytest.mark.parametrize("overrides, words", [
    (["dataset=mnist5k"], "give the checkpoint"),
    (["model_file={dir}/mlp.pt", "arch=test_certify_api:mnist_mlp"], "needs dataset="),
    (["model_file={dir}/mlp.pt", "dataset=mnist5k"], "arch="),
    (["model_file={dir}/mlp.pt", "dataset=mnist5k", "ckpt={dir}/x.ckpt"], "not both"),
    (["model_file={dir}/small.onnx", "dataset=mnist5k"], "shape"),
])
def test_cli_refuses_a_model_without_a_fitting_dataset(overrides, words, tmp_path):
    torch.save(mnist_mlp().state_dict(), tmp_path / "mlp.pt")
    _export(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), (1, 8, 8), tmp_path / "small.onnx")
    with pytest.raises(UserError) as err:
        _cli(*(o.format(dir=tmp_path) for o in overrides), f"out_dir={tmp_path / 'out'}")
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
