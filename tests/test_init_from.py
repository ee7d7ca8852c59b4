"""train.py init_from=<file>: a fresh run from the weights of a published .mat, an ONNX file, a state
dict or an mmru checkpoint; refusals before any work; the file's md5 in the run's recipe."""

import hashlib
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from conftest import ROOT
from fake_datasets import write_idx_mnist
from init_nets import lenet_small
from mmru.certification.checkpoint import load_checkpoint
from mmru.console import LITLOGGER_TIP, quiet_lightning
from mmru.convert import from_mat
from mmru.errors import ConfigError
from mmru.report_markdown import describe, recipe_of
from mmru.training import build_datamodule, compose_train_config, train
from wandb_log import offline_config

MAT = ROOT / "zoo" / "croce-hein-2020" / "mmr_univ_mnist.mat"  # the authors' published MNIST model
# one step on one batch of 64 points; lr 1e-12: the weights the step leaves are the loaded ones
ONE_STEP = ["logger=none", "dataset=mnist", "batch_size=64", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "lr=1e-12"]


@pytest.fixture
def data(tmp_path) -> list[str]:
    """Tiny MNIST files (64 training, 32 test images) in the official format: fast to load."""
    write_idx_mnist(tmp_path / "data", "MNIST", n_train=64, n_test=32)
    return [f"paths.data_dir={tmp_path / 'data'}"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def seeded_lenet(seed: int, logit_scale: float = 1.0) -> torch.nn.Sequential:
    """lenet_small, seeded; ``logit_scale`` sharpens its logits, so that its loss stands out from
    a fresh net's (on random images, about ln 10 for every fresh net)."""
    torch.manual_seed(seed)
    net = lenet_small().eval()
    with torch.no_grad():
        net[-1].weight.mul_(logit_scale)
    return net


def write_source(kind: str, tmp_path: Path, data: list[str]) -> tuple[Path, list[str], torch.nn.Module]:
    """A weights file of ``kind``, the overrides that name it, and the net it holds (computed apart)."""
    if kind == "mat":
        return MAT, [f"init_from={MAT}"], from_mat(MAT)
    module = seeded_lenet(7, logit_scale=30.0)
    state_dict = tmp_path / "weights.pt"
    torch.save(module.state_dict(), state_dict)
    if kind == "state_dict":
        return state_dict, [f"init_from={state_dict}", "arch=init_nets:lenet_small"], module
    if kind == "onnx":
        path = tmp_path / "weights.onnx"
        torch.onnx.export(module, torch.zeros(1, 1, 28, 28), path, dynamo=False)
        return path, [f"init_from={path}"], module
    # an mmru checkpoint: that of a one-step run from the state dict
    first = train(compose_train_config([*ONE_STEP, *data, f"init_from={state_dict}", "arch=init_nets:lenet_small"],
                                       tmp_path / "first"))
    path = Path(first["checkpoint"])
    return path, [f"init_from={path}"], load_checkpoint(path)[0]


def training_points(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    x, y = zip(*[dm.train_set[i] for i in range(len(dm.train_set))])
    return torch.stack(x), torch.tensor(y)


@pytest.mark.parametrize("kind", ["state_dict", "onnx", "mat", "checkpoint"])
def test_the_first_step_trains_the_loaded_net(tmp_path, data, kind):
    path, overrides, source = write_source(kind, tmp_path, data)
    logger = "logger=wandb" if kind == "state_dict" else "logger=none"  # W&B's offline start costs seconds: once
    cfg = compose_train_config([*(o for o in ONE_STEP if o != "logger=none"), logger, *data, *overrides],
                               tmp_path / "run")
    metrics = train(cfg)
    x, y = training_points(cfg)  # the 64 points of the one batch: the step's loss is their mean CE
    with torch.no_grad():
        expected = F.cross_entropy(source(x), y).item()
        fresh = F.cross_entropy(seeded_lenet(0)(x), y).item()
    assert abs(fresh - expected) > 0.1  # the test can tell the loaded net from another one
    assert metrics["train/loss"] == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():  # and the weights after the 1e-12 step compute the loaded net
        torch.testing.assert_close(load_checkpoint(metrics["checkpoint"])[0](x), source(x), rtol=1e-5, atol=1e-5)
    ckpt = torch.load(metrics["checkpoint"], weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 1  # epochs and steps count from the start
    record = {"path": str(path.resolve()), "md5": md5(path)}
    assert ckpt["hyper_parameters"]["run_config"]["init_from"] == record
    # certify.py's summary.json takes its "run" from here; the report's recipe names the file
    run = load_checkpoint(metrics["checkpoint"])[1]
    assert run["init_from"] == record
    text = describe(recipe_of({"run": run, "recipe": {"epochs": 1}, "n_points": 64}))
    assert f"fine-tuned from {path.name} (md5 {md5(path)})" in text
    if logger == "logger=wandb":
        (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
        assert json.loads(offline_config(run_file)["init_from"]) == record


def test_init_from_and_ckpt_path_are_refused_together_before_any_work(tmp_path):
    path, overrides, _ = write_source("state_dict", tmp_path, [])
    # an empty data dir: the data would fail later, so the refusal comes first
    cfg = compose_train_config([*ONE_STEP, *overrides, f"ckpt_path={path}", f"paths.data_dir={tmp_path / 'empty'}"],
                               tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^init_from= starts a new run .* give one of them, not both\.$"):
        train(cfg)


def test_weights_of_other_shapes_are_refused_naming_the_shapes(tmp_path):
    path = tmp_path / "narrow.pt"
    torch.save(lenet_small(8).state_dict(), path)
    empty = f"paths.data_dir={tmp_path / 'empty'}"  # refused before the data would fail
    cfg = compose_train_config([*ONE_STEP, f"init_from={path}", "arch=init_nets:lenet_small_8", empty],
                               tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith(f"init_from={path} does not fit model=cnn_small: layer 0 is Conv2d weight [8, 1, 4, 4]")
    assert "Conv2d weight [16, 1, 4, 4]" in message and "weight [32, 8, 4, 4]" in message
    assert "weight [32, 16, 4, 4]" in message and "\n" not in message and message.endswith(".")
    # another architecture altogether: the layer counts and shapes
    cfg = compose_train_config([*ONE_STEP, f"init_from={MAT}", "model=mlp", empty], tmp_path / "mlp")
    with pytest.raises(ConfigError, match=r"does not fit model=mlp: the file has 4 layers \(Conv2d weight "
                                          r"\[16, 1, 4, 4\].*the model 3 \(Linear weight \[1024, 784\]"):
        train(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        train(compose_train_config([*ONE_STEP, f"init_from={tmp_path / 'none.mat'}", empty], tmp_path / "none"))


def test_a_resumed_fine_tune_keeps_its_init_from_record(tmp_path, data):
    path, overrides, _ = write_source("state_dict", tmp_path, data)
    first = train(compose_train_config([*ONE_STEP, *data, *overrides], tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = train(compose_train_config([*ONE_STEP, *data, "trainer.max_epochs=2", f"ckpt_path={last}"],
                                         tmp_path / "run"))
    assert resumed["checkpoint"] != first["checkpoint"]
    run = load_checkpoint(resumed["checkpoint"])[1]
    assert run["init_from"] == {"path": str(path.resolve()), "md5": md5(path)} and run["epochs"] == 2


def test_train_py_fine_tunes_from_an_onnx_file_with_a_quiet_console(tmp_path, data):
    """The entry point, once: the start is announced with its md5, and neither Lightning's litlogger
    advertisement nor torch's LeafSpec deprecation (from Lightning's internals) reaches the console."""
    path = tmp_path / "weights.onnx"
    torch.onnx.export(seeded_lenet(7), torch.zeros(1, 1, 28, 28), path, dynamo=False)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *ONE_STEP, *data, f"init_from={path}",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console
    assert "`Trainer.fit` stopped" in console  # the fit ran, where both messages used to appear
    assert f"md5 {md5(path)}" in console
    assert "litlogger" not in console and "LeafSpec" not in console


def test_the_console_filters_drop_those_two_messages_only():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    from lightning.pytorch.utilities import rank_zero_info
    from torch.utils._pytree import LeafSpec

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_lightning()
            LeafSpec()  # what Lightning's _pytree does on every fit
            warnings.warn("`isinstance(x, Other)` is deprecated", FutureWarning)
            rank_zero_info(LITLOGGER_TIP + "(https://pypi.org/project/litlogger/) to enable LitLogger.")
            rank_zero_info("another message")
    finally:
        logger.removeHandler(handler)
    assert [str(w.message) for w in seen] == ["`isinstance(x, Other)` is deprecated"]
    assert [r.getMessage() for r in records] == ["another message"]
