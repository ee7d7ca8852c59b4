"""Every schedule of the schemes can start where a fine-tune needs it, and the fine-tune configs do."""

from pathlib import Path

import hydra
import pytest

from conftest import ROOT
from mmru.module import lr_drop_epoch
from mmru.regularizers.ibp_union import CROWNIBPUnion, IBPUnion
from mmru.regularizers.universal_ibp import UniversalIBP
from mmru.training import compose_train_config, initial_weights, validate_config

EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}
FINETUNES = sorted(p.stem for p in (ROOT / "conf" / "experiment" / "finetune").glob("*.yaml"))


def test_the_learning_rate_drop_can_be_left_out():
    assert lr_drop_epoch(100, 0.1) == 90  # the paper: lr / 10 for the last 10 of 100 epochs
    assert lr_drop_epoch(10, 0.1) == 9
    assert lr_drop_epoch(5, 0.0) == 5 and lr_drop_epoch(1, 0.0) == 1  # never reached: no drop
    assert lr_drop_epoch(1, 0.1) == 1  # one epoch: at the configured lr


def test_the_radii_ramp_can_start_above_zero():
    reg = IBPUnion(EPS, warmup_epochs=1.0, ramp_epochs=2.0, eps_factor_start=0.5)
    values = []
    for t in (0.0, 0.5, 2.0, 3.0, 7.0):
        reg.on_step_start(t)
        values.append(reg.schedule()["eps_factor"])
    assert values == pytest.approx([0.5, 0.5, 0.75, 1.0, 1.0])
    crown = CROWNIBPUnion(EPS, warmup_epochs=0.0, ramp_epochs=4.0, eps_factor_start=0.2, beta_start=0.5)
    assert crown.on_epoch_start(2, 10) == pytest.approx({"eps_factor": 0.6, "kappa": 0.75, "beta": 0.25})
    both = UniversalIBP(3.0, 12.0, 1.0, 0.175, EPS, eps_factor_start=0.4, warmup_epochs=0.0, ramp_epochs=2.0)
    assert both.on_epoch_start(0, 5)["eps_factor"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="eps_factor_start"):
        IBPUnion(EPS, eps_factor_start=1.5)


def test_no_warm_up_and_no_ramp_start_every_schedule_at_its_end():
    assert IBPUnion(EPS, warmup_epochs=0.0, ramp_epochs=0.0).on_epoch_start(0, 3) == {"eps_factor": 1.0,
                                                                                        "kappa": 0.5}
    values = UniversalIBP(3.0, 12.0, 1.0, 0.175, EPS, k_b_start=0.05, k_b_end=0.05, lambda_warmup_epochs=0,
                          warmup_epochs=0.0, ramp_epochs=0.0).on_epoch_start(0, 3)
    assert values == pytest.approx({"lambda_factor": 1.0, "k_b_fraction": 0.05, "eps_factor": 1.0, "kappa": 0.5})


@pytest.mark.parametrize("name", FINETUNES)
def test_finetune_configs_start_from_the_published_model_at_their_settings(tmp_path, name):
    cfg = compose_train_config([f"experiment=finetune/{name}", "logger=none"], tmp_path)
    validate_config(cfg)
    dataset, scheme = name.split("_", 1)
    assert cfg.dataset.name == dataset and cfg.regularizer_name == scheme and cfg.dataset.val_fraction > 0
    assert Path(cfg.init_from) == Path("zoo/croce-hein-2020") / f"mmr_univ_{dataset}.mat"
    cfg.init_from = str(ROOT / cfg.init_from)  # relative to the repository root, where train.py runs
    assert initial_weights(cfg).md5  # the published net fits the configured model
    values = hydra.utils.instantiate(cfg.regularizer).on_epoch_start(0, cfg.trainer.max_epochs)
    if "universal" in scheme:  # the authors' end-of-training settings and the published model's numbers
        gamma_inf, lambda_inf = {"mnist": (0.175, 12.0), "fmnist": (0.15, 40.0)}[dataset]
        assert (cfg.regularizer.gamma_1, cfg.regularizer.gamma_inf) == (1.0, gamma_inf)
        assert (cfg.regularizer.lambda_1, cfg.regularizer.lambda_inf) == (3.0, lambda_inf)
        assert values["lambda_factor"] == 1.0 and values["k_b_fraction"] == pytest.approx(0.05)
        assert cfg.regularizer.weighting == "per_norm"
    if scheme == "universal":
        assert cfg.lr == 5e-5 and cfg.lr_drop_fraction == 0.0
    if "ibp" in scheme:  # a trained net: no clean warm-up, the radii ramp from 0 within the run
        assert values["eps_factor"] == 0.0 and cfg.regularizer.warmup_epochs == 0.0
        assert 0 < cfg.regularizer.ramp_epochs < cfg.trainer.max_epochs
