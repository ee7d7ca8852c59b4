"""Rebuilding a trained net from a training checkpoint, executing no pickled code."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import hydra
import torch

from mmru.errors import UserError
from mmru.models import ReLUNet


def load_checkpoint(path: str | Path) -> tuple[ReLUNet, dict]:
    """The net (eval mode, CPU) and the run facts stored by ``RobustClassifier``.

    The checkpoint is read with ``weights_only=True``: it may hold tensors and plain data only,
    so a tampered file cannot run code. The net is rebuilt from the recipe in its
    hyperparameters (``net_config``), whose target must be one of mmru's builders.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"checkpoint {path} cannot be read safely ({str(err).splitlines()[0][:160]})") from None
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    recipe = hparams.get("net_config")
    if not isinstance(recipe, dict) or not str(recipe.get("_target_", "")).startswith("mmru.models."):
        raise UserError(f"checkpoint {path} was not written by mmru's train.py (no net recipe in it)")
    net = hydra.utils.instantiate(recipe)
    state = {k.removeprefix("net."): v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"checkpoint {path} does not match its own architecture ({str(err).splitlines()[0]})") from None
    run = dict(hparams.get("run_config") or {})
    # Lightning stores the index of the epoch the checkpoint closed; train_seconds: RobustClassifier
    run.update(epochs=int(ckpt["epoch"]) + 1 if "epoch" in ckpt else None, train_seconds=ckpt.get("train_seconds"))
    return net.eval(), run
