"""The LightningModule: a ReLUNet, a training scheme, Adam, and test-error metrics."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from mmru.errors import TrainingDiverged
from mmru.models import ReLUNet
from mmru.regularizers.base import Regularizer


class RobustClassifier(L.LightningModule):
    """Trains ``net`` on the objective of ``regularizer`` (plain CE, MMR, AT, KW, ...).

    Adam with ``lr``; the learning rate drops by 10x for the last ``lr_drop_fraction`` of the
    epochs (the paper: last 10 of 100). ``net_config`` is the plain-dict recipe of the net
    (builder target and arguments); it is stored in the checkpoint so that ``certify.py``
    can rebuild the net from the checkpoint alone.
    """

    def __init__(
        self,
        net: ReLUNet,
        regularizer: Regularizer | None = None,
        lr: float = 5e-4,
        lr_drop_fraction: float = 0.1,
        net_config: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "regularizer"])
        self.net = net
        self.regularizer = regularizer or Regularizer()
        k = net.num_classes
        # ModuleDict keys may not shadow nn.Module attributes ("train"), hence the suffix.
        self.accuracy = torch.nn.ModuleDict(
            {f"{split}_acc": MulticlassAccuracy(num_classes=k, average="micro") for split in ("train", "val", "test")}
        )

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()
        self._train_seconds_before = getattr(self, "_train_seconds_before", 0.0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Wall seconds of training so far, over every resumed segment (for report recipes)."""
        started = getattr(self, "_fit_started", None)
        spent = 0.0 if started is None else time.perf_counter() - started
        checkpoint["train_seconds"] = getattr(self, "_train_seconds_before", 0.0) + spent

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._train_seconds_before = float(checkpoint.get("train_seconds", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.regularizer.training_loss(self.net, x, y)
        self.accuracy["train_acc"](out.logits.detach(), y)
        self._last_loss, self._last_batch = out.loss.detach(), batch_idx  # for on_before_optimizer_step
        self.log("train/loss", out.loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        for name, value in out.logs.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True)
        return out.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before a NaN or infinite loss or gradient reaches the weights.

        The verdict is agreed on by all processes of a DDP run, so all stop together. Raising
        before the step keeps the weights finite and the checkpoints of earlier epochs
        (last.ckpt among them) as they were: ModelCheckpoint does not save on exceptions.
        """
        loss = self._last_loss
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(loss), *(torch.isfinite(g).all() for g in grads)]).all())
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            what = f"loss became {float(loss)}" if not torch.isfinite(loss) else "loss's gradient became NaN or inf"
            raise TrainingDiverged(f"training diverged: the {what} at epoch {self.current_epoch}, "
                                   f"step {self._last_batch} of the epoch (global step {self.global_step})")

    def _eval_step(self, split: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        logits = self.net(x)
        self.accuracy[f"{split}_acc"](logits, y)
        self.log(f"{split}/loss", torch.nn.functional.cross_entropy(logits, y), on_step=False, on_epoch=True,
                 sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_error(self, split: str) -> None:
        # torchmetrics syncs the counts across processes in compute(), so this is the global error.
        self.log(f"{split}/error", 1 - self.accuracy[f"{split}_acc"].compute(), prog_bar=split != "train")
        self.accuracy[f"{split}_acc"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_error("train")

    def on_validation_epoch_end(self) -> None:
        self._log_error("val")

    def on_test_epoch_end(self) -> None:
        self._log_error("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        epochs = self.trainer.max_epochs
        drop_at = max(1, int(round(epochs * (1 - self.hparams.lr_drop_fraction))))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[drop_at], gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
