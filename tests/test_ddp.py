"""DDP (2 CPU processes, gloo) takes the same steps as one process on the same global batches.

Each rank averages its loss over its half of a global batch and DDP averages the gradients,
so with the global batch split between the ranks (``ddp_probe.SequentialDataModule``) every
step must equal a single-process step on the whole batch, and the synced metrics (train loss
and its terms, train and test error) must equal the single-process ones.
"""

import csv
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from conftest import ROOT
from mmru.training import train

GLOBAL_BATCH = 64
COMMON = ["datamodule._target_=ddp_probe.SequentialDataModule", "datamodule.limit_train=256",
          "datamodule.limit_test=64", "trainer.max_epochs=1", "logger=csv", "trainer.enable_progress_bar=false",
          "trainer.enable_model_summary=false"]


def probe(directory):
    return f"+callbacks.probe={{_target_:ddp_probe.RecordSteps,dirpath:{directory}}}"


def run_ddp(out):
    tests = str(ROOT / "tests")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([tests, *filter(None, [os.environ.get("PYTHONPATH")])])}
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"batch_size={GLOBAL_BATCH // 2}",
            *COMMON, probe(out / "probe"), f"hydra.run.dir={out}"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_single(out):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"batch_size={GLOBAL_BATCH}", *COMMON, probe(out / "probe")],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.regularizer_name = cfg.hydra.runtime.choices.regularizer
        del cfg.hydra
    train(cfg)


def epoch_metrics(out):
    """The logged epoch-level values, merged over the CSV logger's rows."""
    with (out / "csv" / "version_0" / "metrics.csv").open() as fh:
        return {k: float(v) for row in csv.DictReader(fh) for k, v in row.items() if v and "/" in k}


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process_on_the_global_batch(tmp_path):
    run_ddp(tmp_path / "ddp")
    run_single(tmp_path / "single")
    ranks = [torch.load(tmp_path / "ddp" / "probe" / f"steps_rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = torch.load(tmp_path / "single" / "probe" / "steps_rank0.pt", weights_only=True)
    assert ranks[0]["world_size"] == 2 and single["world_size"] == 1
    steps = len(single["loss"])
    assert steps == 256 // GLOBAL_BATCH and all(len(r["loss"]) == steps for r in ranks)
    for i in range(steps):
        # the two local batches are exactly the global batch
        both = torch.cat([r["images"][i] for r in ranks])
        assert torch.equal(both.sort().values, single["images"][i].sort().values)
        assert (ranks[0]["loss"][i] + ranks[1]["loss"][i]) / 2 == pytest.approx(single["loss"][i], abs=1e-4)
        torch.testing.assert_close(ranks[1]["weights"][i], ranks[0]["weights"][i], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0]["weights"][i], single["weights"][i], rtol=0, atol=1e-4)
    ddp, one = epoch_metrics(tmp_path / "ddp"), epoch_metrics(tmp_path / "single")
    assert {"train/loss", "train/ce", "train/error", "test/error", "test/loss"} <= set(ddp)
    for key in one:
        assert ddp[key] == pytest.approx(one[key], abs=1e-4), key
