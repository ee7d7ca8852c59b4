"""train.py end to end through Hydra's compose API: errors, resume, W&B offline, datasets."""

import subprocess
import sys

import pytest
import torch
from omegaconf import open_dict

from conftest import ROOT
from mmru.training import ConfigError, compose_train_config, train
from wandb_log import offline_history


def make_cfg(tmp_path, overrides=()):
    return compose_train_config(["logger=none", *overrides], tmp_path)


SMALL = ["datamodule.limit_train=256", "datamodule.limit_test=128", "batch_size=64",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_unknown_dataset_lists_the_choices():
    proc = run_cli("dataset=nosuch", "logger=none")
    assert proc.returncode != 0
    assert "mnist5k" in proc.stderr and "cifar10" in proc.stderr and "gts" in proc.stderr


def test_missing_data_is_one_sentence(tmp_path):
    proc = run_cli("dataset=mnist", f"paths.data_dir={tmp_path / 'empty'}", "logger=none",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Dataset 'mnist'") and str(tmp_path / "empty") in last
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override", ["lr=0", "trainer.max_epochs=0", "batch_size=-3", "dataset.eps.l2=0"])
def test_nonpositive_values_are_rejected(tmp_path, override):
    with pytest.raises(ConfigError, match="must be"):
        train(make_cfg(tmp_path, [override]))


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    common = [*SMALL, "trainer.max_epochs=3"]
    full = train(make_cfg(tmp_path / "full", common))
    full_weights = torch.load(full["checkpoint"], weights_only=True)["state_dict"]

    # The "killed" run: stops after its first epoch (last.ckpt written), then resumes.
    killed_cfg = make_cfg(tmp_path / "killed", [*common])
    with open_dict(killed_cfg):
        killed_cfg.callbacks.kill = {"_target_": "killer.KillAfterEpoch", "epoch": 0}
    sys.path.insert(0, str(ROOT / "tests"))
    with pytest.raises(RuntimeError, match="killed"):
        train(killed_cfg)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    resumed_cfg = make_cfg(tmp_path / "killed", [*common, f"ckpt_path={last}"])
    resumed = train(resumed_cfg)
    resumed_weights = torch.load(resumed["checkpoint"], weights_only=True)["state_dict"]
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=0, msg=name)


def test_wandb_offline_run_holds_metrics(tmp_path):
    cfg = make_cfg(tmp_path, [*SMALL, "trainer.max_epochs=1", "logger=wandb"])
    metrics = train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history = offline_history(runs[0])
    assert float(history["test/error"][-1]) == pytest.approx(metrics["test/error"])
    assert "train/loss" in history and "train/error" in history
    log = runs[0].read_bytes()  # the resolved config and the checkpoint path are in the run too
    assert b"checkpoint_path" in log and b"mnist5k" in log


@pytest.mark.parametrize("regularizer", ["none", "universal"])
def test_gts_trains_one_epoch_on_fake_files(tmp_path, fake_data_dir, regularizer):
    cfg = make_cfg(tmp_path, [*SMALL, "dataset=gts", f"regularizer={regularizer}", f"paths.data_dir={fake_data_dir}",
                              "trainer.max_epochs=1", "datamodule.download=false"])
    metrics = train(cfg)
    assert 0 <= metrics["test/error"] <= 1
