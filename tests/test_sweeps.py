"""Sweeps, launchers and the Table 1 experiments: the configs compose to what they promise."""

import itertools
import os
import re
import subprocess
import sys

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import LogUniformDistribution, UniformDistribution

from conftest import ROOT
from mmru import gpu_pinning
from mmru.paper_table1 import SCHEME_LABELS
from mmru.training import build_datamodule

DATASETS = ["mnist", "mnist5k", "fmnist", "gts", "cifar10"]
TABLE1_DATASETS = ["mnist", "fmnist", "gts", "cifar10"]
SCHEMES = ["plain" if s == "none" else s for s in SCHEME_LABELS]


def compose_cfg(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=none", *overrides], return_hydra_config=True)


def sweep_values(params) -> dict[str, list]:
    """What the basic sweeper makes of ``hydra.sweeper.params``: each key's list of values."""
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.get_key_element(): list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
            for o in overrides}


# ---- hyperparameter searches ----------------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_universal_grid_brackets_each_datasets_eps(dataset):
    cfg = compose_cfg(["hparams_search=universal_grid", f"dataset={dataset}"])
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.runtime.choices.regularizer == "universal"
    grid = sweep_values(cfg.hydra.sweeper.params)
    assert len(list(itertools.product(*grid.values()))) == 54
    eps = cfg.dataset.eps
    for key, p in [("regularizer.gamma_1", "l1"), ("regularizer.gamma_inf", "linf")]:
        ratios = [float(v) / eps[p] for v in grid[key]]
        assert all(1 - 1e-9 <= r <= 3 + 1e-9 for r in ratios), (key, ratios)  # Sec. 5.1: gamma_p ~ 1-2 x eps_p
    assert {"regularizer.lambda_1", "regularizer.lambda_inf"} <= set(grid)


@pytest.mark.parametrize("search", ["universal_grid", "universal_optuna"])
def test_searches_select_on_a_validation_split_of_the_training_set(search):
    cfg = compose_cfg([f"hparams_search={search}", "datamodule.limit_test=10"])
    assert cfg.datamodule.val_fraction > 0 and cfg.certify_after_training
    # the objective is certified on the validation split: certify's metrics are named after their split
    assert "split=val" in cfg.certify_overrides and cfg.optimized_metric.startswith("certify_val/")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    train_idx, val_idx = set(datamodule.train_set.indices), set(datamodule.val_set.indices)
    assert val_idx and not train_idx & val_idx
    assert datamodule.val_set.dataset is datamodule.train_set.dataset  # both from the training data


@pytest.mark.parametrize("dataset", ["mnist", "gts"])
def test_universal_optuna_minimises_over_log_lambdas_and_gammas_near_eps(dataset):
    cfg = compose_cfg(["hparams_search=universal_optuna", f"dataset={dataset}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed
    assert isinstance(space["regularizer.lambda_1"], LogUniformDistribution)
    assert isinstance(space["regularizer.lambda_inf"], LogUniformDistribution)
    for key, p in [("regularizer.gamma_1", "l1"), ("regularizer.gamma_inf", "linf")]:
        assert isinstance(space[key], UniformDistribution)
        assert (space[key].low, space[key].high) == pytest.approx((cfg.dataset.eps[p], 3 * cfg.dataset.eps[p]))


# ---- launchers --------------------------------------------------------------------------------

def test_joblib_gpus_launcher_takes_its_size_from_the_environment(monkeypatch):
    monkeypatch.setenv("MMRU_NUM_GPUS", "3")
    cfg = compose_cfg(["hydra/launcher=joblib_gpus"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3
    assert cfg.hydra.callbacks.pin_gpu.num_gpus == 3


def test_slurm_launcher_takes_partition_and_time_from_overrides():
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node, launcher.tasks_per_node) == (
        "gpu", 30, 1, 1)


def test_gpu_slots_are_exclusive_while_held(tmp_path):
    first, second = gpu_pinning.claim_slot(tmp_path, 2), gpu_pinning.claim_slot(tmp_path, 2)
    assert (first[0], second[0]) == (0, 1)
    with pytest.raises(RuntimeError, match="all 2 GPU slots"):
        gpu_pinning.claim_slot(tmp_path, 2)
    first[1].close()  # a worker that exits releases its slot to its replacement
    third = gpu_pinning.claim_slot(tmp_path, 2)
    assert third[0] == 0
    for _, handle in (second, third):
        handle.close()


def test_pinning_shares_out_the_launching_shells_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pin = gpu_pinning.PinGPUPerWorker(num_gpus=2, lock_dir=str(tmp_path))
    with pytest.raises(ValueError, match="lists only 2 GPUs"):
        gpu_pinning.PinGPUPerWorker(num_gpus=3, lock_dir=str(tmp_path))
    held = gpu_pinning.claim_slot(tmp_path, 2)  # another worker holds slot 0
    monkeypatch.setattr(gpu_pinning, "_claimed", None)
    job = OmegaConf.create({"hydra": {"job": {"num": 7}}})
    pin.on_job_start(job)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    pin.on_job_start(job)  # the process keeps its GPU for every later job
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    held[1].close()
    gpu_pinning._claimed[1].close()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_pinning.PinGPUPerWorker(num_gpus=2, lock_dir=str(tmp_path)).gpus == ["0", "1"]


@pytest.mark.slow
def test_joblib_multirun_runs_two_jobs_each_on_its_own_gpu(tmp_path):
    env = {**os.environ, "MMRU_NUM_GPUS": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=joblib_gpus", "seed=0,1",
         "datamodule.limit_train=128", "datamodule.limit_test=64", "trainer.max_epochs=1", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pins = {}
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        log = (tmp_path / job / "train.log").read_text()
        gpu, pid = re.search(r"runs on GPU (\S+) \(process (\d+)\)", log).groups()
        assert pins.setdefault(pid, gpu) == gpu
    assert set(pins.values()) <= {"0", "1"} and len(set(pins.values())) == len(pins)  # no GPU shared


# ---- Table 1 experiments ---------------------------------------------------------------------

@pytest.mark.parametrize("dataset", TABLE1_DATASETS)
def test_table1_experiments_train_each_scheme_with_its_hyperparameters(dataset):
    for scheme in SCHEMES:
        cfg = compose_cfg([f"experiment=table1/{dataset}_{scheme}"])
        assert cfg.dataset.name == dataset and cfg.task_name == "table1"
        assert cfg.hydra.runtime.choices.regularizer == ("none" if scheme == "plain" else scheme)
        assert cfg.trainer.max_epochs == 100 and cfg.certify_after_training
        reg = cfg.regularizer
        if "at_" in scheme:
            assert reg.steps == (40 if dataset in ("mnist", "fmnist") else 7) and reg.adv_fraction == 0.5
        if scheme.startswith("mmr_"):
            assert (reg.k_b_start, reg.k_b_end) == (0.1, 0.02) and reg.gamma_b == reg.gamma_d
        hydra.utils.instantiate(reg)  # every value is a parameter the scheme takes
    universal = compose_cfg([f"experiment=table1/{dataset}_universal"]).regularizer
    published = {"mnist": (3, 12), "fmnist": (3, 40), "gts": (3, 12), "cifar10": (1, 6)}  # Sec. 5.1
    assert (universal.lambda_1, universal.lambda_inf) == published[dataset]
    assert (universal.k_b_start, universal.k_b_end) == (0.2, 0.05)


def test_mnist5k_all_runs_every_scheme_small():
    cfg = compose_cfg(["experiment=table1/mnist5k_all"])
    params = sweep_values(cfg.hydra.sweeper.params)
    assert params.pop("+experiment@_global_") == [f"table1/mnist_{s}" for s in SCHEMES]
    assert params == {"dataset": ["mnist5k"], "trainer.max_epochs": [5]}
    assert "mip=false" in cfg.certify_overrides
    # one job as the sweeper composes it: the sweep's values win over the scheme's experiment
    job = compose_cfg(["experiment=table1/mnist5k_all", "+experiment@_global_=table1/mnist_universal",
                       "dataset=mnist5k", "trainer.max_epochs=5"])
    assert (job.dataset.name, job.trainer.max_epochs, job.regularizer.lambda_inf) == ("mnist5k", 5, 12)
    assert job.certify_overrides == cfg.certify_overrides and job.hydra.runtime.choices.regularizer == "universal"


def test_table1_all_is_every_dataset_and_scheme():
    cfg = compose_cfg(["experiment=table1/all"])
    runs = sweep_values(cfg.hydra.sweeper.params)["+experiment@_global_"]
    assert runs == [f"table1/{d}_{s}" for d in TABLE1_DATASETS for s in SCHEMES]
    files = {f"table1/{p.stem}" for p in (ROOT / "conf" / "experiment" / "table1").glob("*.yaml")}
    # beyond the paper's 11 schemes: the union-of-balls certified training schemes (issue 10)
    union = {f"table1/{d}_{s}" for d in TABLE1_DATASETS for s in ("ibp_union", "crown_ibp_union", "universal_ibp")}
    assert files - set(runs) == {"table1/all", "table1/mnist5k_all"} | union
