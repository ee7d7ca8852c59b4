"""Everything ``train.py`` does, as functions a test can call with a composed config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf, open_dict

from mmru.allocator import keep_freed_memory
from mmru.console import quiet_lightning
from mmru.data import RobustDataModule
from mmru.errors import ConfigError, TrainingDiverged
from mmru.init_weights import InitWeights, read_init_weights
from mmru.module import RobustClassifier
from mmru.validation import validate_certify_config, validate_train_config


CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
#: mmru's own keys of the trainer group (conf/trainer/cpu.yaml), taken out before lightning.Trainer is built
SPEED_OPTIONS = ("resident_data", "compile", "compile_mode", "check_finite_every_n_steps")


def compose_train_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """conf/config.yaml with ``overrides``, as ``train.py`` would see it, outside a Hydra app.

    For scripts and tests: Hydra's compose API does not set the run directory or the
    runtime choices that the config reads, so they are filled in here.
    """
    cfg = compose_config("config", overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.regularizer_name = cfg.hydra.runtime.choices.regularizer
        del cfg.hydra
    return cfg


def compose_config(name: str, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/<name>.yaml``, inside a running Hydra app (multirun jobs) or outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides, return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=return_hydra_config)


def validate_config(cfg: DictConfig) -> None:
    """Reject values that would only fail (or silently misbehave) later in the run.

    Covers the trainer's and the regularizer's options (mmru.validation's tables) and, when the
    run certifies its checkpoint at the end, certify.py's options, so that a typo there does not
    surface only after the training; and the combinations resident data cannot serve.
    """
    validate_train_config(cfg)
    if cfg.get("init_from") is not None and cfg.get("ckpt_path") is not None:
        raise ConfigError("init_from= starts a new run from a file's weights and ckpt_path= resumes a killed run "
                          "exactly: give one of them, not both.")
    if cfg.certify_after_training:
        from hydra.errors import HydraException

        try:
            certify_cfg = compose_config("certify", overrides=list(cfg.certify_overrides))
        except HydraException as err:
            raise ConfigError(f"certify_overrides cannot be applied ({str(err).splitlines()[0]}).") from None
        try:
            validate_certify_config(certify_cfg)
        except ConfigError as err:
            raise ConfigError(f"certify_overrides: {err}") from None
        if certify_cfg.split == "val" and not cfg.dataset.val_fraction > 0:
            raise ConfigError("certify_overrides ask for split=val, which needs dataset.val_fraction > 0.")
    if cfg.trainer.get("resident_data"):
        if cfg.dataset.augment:
            raise ConfigError("trainer.resident_data=true holds fixed tensors, so it cannot serve "
                              "dataset.augment=true.")
        if cfg.trainer.get("strategy") == "ddp" or cfg.trainer.get("devices") not in (1, [0], None):
            raise ConfigError("trainer.resident_data=true serves one device; set it false for DDP or several devices.")


def build_datamodule(cfg: DictConfig) -> RobustDataModule:
    return hydra.utils.instantiate(cfg.datamodule, resident=bool(cfg.trainer.get("resident_data", False)))


def net_recipe(cfg: DictConfig) -> dict[str, Any]:
    """The model config as plain data: stored in checkpoints to rebuild the net without pickle."""
    return OmegaConf.to_container(cfg.model, resolve=True)


def initial_weights(cfg: DictConfig) -> InitWeights | None:
    """The weights of ``init_from`` (None without it), checked against the configured model."""
    if cfg.get("init_from") is None:
        return None
    model_name = str(cfg.model._target_).rsplit(".", 1)[-1]  # the builder: cnn_small, mlp
    return read_init_weights(cfg.init_from, hydra.utils.instantiate(net_recipe(cfg)), model_name, cfg.get("arch"))


def build_module(cfg: DictConfig, init: InitWeights | None = None) -> RobustClassifier:
    """The LightningModule of the config; its net starts from ``init``'s weights when given."""
    recipe = net_recipe(cfg)
    net = hydra.utils.instantiate(recipe)
    if init is not None:
        net.load_state_dict(init.state)
    regularizer = hydra.utils.instantiate(cfg.regularizer)
    run_config = {
        "dataset": cfg.dataset.name,
        "eps": OmegaConf.to_container(cfg.dataset.eps, resolve=True),
        "regularizer": cfg.regularizer_name,
        "seed": cfg.seed,
        "val_fraction": cfg.dataset.val_fraction,
        "selected_on": cfg.get("selected_on"),
        "init_from": init.record() if init is not None else None,
    }
    speed = {key: cfg.trainer[key] for key in SPEED_OPTIONS[1:] if key in cfg.trainer}
    return RobustClassifier(net, regularizer, lr=cfg.lr, lr_drop_fraction=cfg.get("lr_drop_fraction", 0.1),
                            net_config=recipe, run_config=run_config, **speed)


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """lightning.Trainer from the trainer group, without mmru's own keys (:data:`SPEED_OPTIONS`)."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in SPEED_OPTIONS}
    return hydra.utils.instantiate(options, **kwargs)


def build_callbacks(cfg: DictConfig, has_validation: bool) -> list[L.Callback]:
    callbacks = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is None:
            continue
        overrides = {}
        if name == "checkpoint" and not has_validation:
            # No held-out split: "best" would have to be judged on training data; keep the latest.
            overrides = {"monitor": None, "save_top_k": 1}
        callbacks.append(hydra.utils.instantiate(conf, **overrides))
    return callbacks


def build_loggers(cfg: DictConfig, init: InitWeights | None = None) -> list:
    """The loggers of the config, each holding the resolved config (``init_from`` with its md5)."""
    loggers = [hydra.utils.instantiate(conf) for conf in (cfg.get("logger") or {}).values() if conf is not None]
    hparams = OmegaConf.to_container(cfg, resolve=True)
    if init is not None:
        hparams["init_from"] = init.record()
    for logger in loggers:
        logger.log_hyperparams(hparams)
    return loggers


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best (or last) checkpoint; returns the final metrics."""
    quiet_lightning()
    validate_config(cfg)
    keep_freed_memory()  # no page faults on each step's large temporaries (CPU: CROWN-IBP 0.8x)
    init = initial_weights(cfg)
    if init is not None:
        rank_zero_info(f"init_from: the weights of {init.path} (md5 {init.md5}); optimizer, schedules and "
                       "epochs start fresh")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.check_sample_shape()
    module = build_module(cfg, init)
    loggers = build_loggers(cfg, init)
    callbacks = build_callbacks(cfg, datamodule.has_validation)
    # Without a held-out split there is nothing to validate on (and the test set must not be).
    no_val = {} if datamodule.has_validation else {"limit_val_batches": 0}
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False, **no_val)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except TrainingDiverged as err:
        kept = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        raise TrainingDiverged(f"{err}; the last good checkpoint is {kept}." if kept else
                               f"{err}, before any checkpoint was saved.") from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    metrics["checkpoint"] = best or ""
    for logger in loggers:
        logger.log_hyperparams({"checkpoint_path": best or ""})
    _finish_wandb(loggers)
    if cfg.certify_after_training:
        metrics.update(certify_checkpoint(best or str(_last_checkpoint(trainer)), cfg))
    return metrics


def objective(metrics: dict[str, Any], cfg: DictConfig) -> float:
    """The value a sweep minimises: ``metrics[cfg.optimized_metric]``, else the test error."""
    key = cfg.get("optimized_metric")
    if key is None:
        return metrics["test/error"]
    if key not in metrics:
        raise ConfigError(f"optimized_metric {key!r} was not computed; available: {', '.join(sorted(metrics))}.")
    return float(metrics[key])


def certify_checkpoint(ckpt: str, cfg: DictConfig) -> dict[str, Any]:
    """Run certify.py's pipeline (conf/certify.yaml + ``certify_overrides``) on ``ckpt``."""
    from mmru.certification.runner import run_certification

    certify_cfg = compose_config("certify", overrides=[f"ckpt={ckpt}", f"data_dir={cfg.paths.data_dir}",
                                                *cfg.certify_overrides])
    summary = run_certification(certify_cfg)
    prefix = f"certify_{summary['split']}"
    out = {f"{prefix}/worst_case_ub": summary["worst_case_ub"]}
    out.update({f"{prefix}/{norm}_{b}": summary[norm][b] for norm in ("l1", "l2", "linf") if norm in summary
                for b in ("lb", "ub")})
    return out


def _last_checkpoint(trainer: L.Trainer) -> str:
    checkpoint = trainer.checkpoint_callback
    if checkpoint is None or not checkpoint.last_model_path:
        raise ConfigError("certify_after_training needs the checkpoint callback (callbacks.checkpoint).")
    return checkpoint.last_model_path


def _finish_wandb(loggers: list) -> None:
    # A Hydra multirun trains several runs in one process: each must close its W&B run.
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()
