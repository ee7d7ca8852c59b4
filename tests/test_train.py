"""train.py end to end through Hydra's compose API: errors, resume, W&B offline, datasets, certify at the end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from conftest import ROOT
from mmru.certification.checkpoint import load_checkpoint
from mmru.training import ConfigError, build_datamodule, compose_train_config, objective, train
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
    # the checkpoint is a 43-class net on 3x32x32 inputs, trained on gts with this scheme
    net, run = load_checkpoint(metrics["checkpoint"])
    assert (net.input_shape, net.num_classes) == ((3, 32, 32), 43)
    assert (run["dataset"], run["regularizer"]) == ("gts", regularizer)
    # the logged test metrics are that net's on the 6 resized test images
    datamodule = build_datamodule(cfg)
    datamodule.setup("test")
    x = torch.stack([datamodule.test_set[i][0] for i in range(6)])
    y = torch.tensor([datamodule.test_set[i][1] for i in range(6)])
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [(7 * i + 3) % 43 for i in range(6)]  # the CSV's labels
    with torch.no_grad():
        logits = net(x)
    assert metrics["test/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert metrics["test/error"] == pytest.approx((logits.argmax(1) != y).float().mean().item())
    if regularizer == "universal":  # eq (17): CE plus a positive penalty, as logged
        assert metrics["train/penalty"] > 0
        assert metrics["train/loss"] == pytest.approx(metrics["train/ce"] + metrics["train/penalty"], rel=1e-5)


# ---- certification at the end of training, and the value a sweep minimises -----------------

@pytest.mark.parametrize("split", ["test", "val"])
def test_certify_after_training_writes_the_runs_summary_and_objective(tmp_path, split):
    certify = ["n_points=8", "batch_size=8", "attack=none", "mip=false", "wandb.enabled=false", "progress=false",
               f"split={split}"]
    # an MLP trained enough that some points are certified and some not (measured)
    cfg = make_cfg(tmp_path, [*SMALL, "datamodule.limit_train=1024", "batch_size=32", "lr=0.005",
                              "trainer.max_epochs=1", "model=mlp", "model.widths=[32]",
                              "dataset.val_fraction=0.1", "certify_after_training=true",
                              f"certify_overrides=[{','.join(repr(c) for c in certify)}]",
                              f"optimized_metric=certify_{split}/worst_case_ub"])
    metrics = train(cfg)
    # certify.py's outputs, in the training run's own directory, for the checkpoint just trained
    saved = json.loads((tmp_path / ("certify" if split == "test" else "certify-val") / "summary.json").read_text())
    assert (saved["split"], saved["n_points"]) == (split, 8)
    assert saved["run"]["checkpoint"] == str(Path(metrics["checkpoint"]).resolve())
    prefix = f"certify_{split}"
    assert any(saved[norm]["lb"] != saved[norm]["ub"] for norm in ("l1", "l2", "linf"))  # lb, ub tell apart
    for norm in ("l1", "l2", "linf"):
        for bound in ("lb", "ub"):
            assert metrics[f"{prefix}/{norm}_{bound}"] == saved[norm][bound], (norm, bound)
    assert metrics[f"{prefix}/worst_case_ub"] == saved["worst_case_ub"]
    # what train.py returns to the sweeper: the metric named by optimized_metric
    assert saved["worst_case_ub"] != metrics["test/error"]  # (so that the next line tells them apart)
    assert objective(metrics, cfg) == saved["worst_case_ub"]
    with open_dict(cfg):
        cfg.optimized_metric = None
    assert objective(metrics, cfg) == metrics["test/error"]
    with open_dict(cfg):
        cfg.optimized_metric = "certify_val/nosuch"
    with pytest.raises(ConfigError, match="optimized_metric 'certify_val/nosuch' was not computed"):
        objective(metrics, cfg)
