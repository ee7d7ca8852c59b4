"""The LightningModule: a ReLUNet, a training scheme, Adam, and test-error metrics.

On a GPU a training step issues its kernels without waiting for any of them (no host
synchronisation per step): the logged values stay on the device until Lightning reads them
(at epoch ends here, every ``log_every_n_steps`` for per-step values), scalars are made on
the device, the train accuracy skips torchmetrics' argument checks (``torch.unique``), and the
NaN/inf guard can be read every ``check_finite_every_n_steps`` steps (see
:meth:`RobustClassifier.on_before_optimizer_step`).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from mmru.errors import TrainingDiverged
from mmru.finite_guard import FiniteGuard
from mmru.models import ReLUNet
from mmru.regularizers.base import Regularizer, TrainingLoss


def lr_drop_epoch(max_epochs: int, drop_fraction: float) -> int:
    """The 0-based epoch from which the learning rate is divided by 10: the last ``drop_fraction`` of
    ``max_epochs`` (rounded), never the first epoch; ``max_epochs`` itself (no drop) for fraction 0."""
    return max(1, int(round(max_epochs * (1 - drop_fraction))))


class RobustClassifier(L.LightningModule):
    """Trains ``net`` on the objective of ``regularizer`` (plain CE, MMR, AT, KW, ...).

    Adam with ``lr``; the learning rate drops by 10x for the last ``lr_drop_fraction`` of the
    epochs (the paper: last 10 of 100; 0: no drop, for a fine-tune that starts at the final learning
    rate). ``net_config`` is the plain-dict recipe of the net
    (builder target and arguments); it is stored in the checkpoint so that ``certify.py``
    can rebuild the net from the checkpoint alone.

    ``compile``: the scheme's training loss (forward, region distances, penalty; its backward
    through AOTAutograd) runs through ``torch.compile`` with ``compile_mode``. The schedules
    change k_B every epoch (Sec. 5.1), which recompiles the part after the distances up to
    torch._dynamo's recompile limit, after which that (cheap) part runs eagerly; the geometry
    stays compiled. Matmuls and convolutions run in full fp32 whenever the module trains (TF32
    off): the region distances (eqs 14, 15) divide by row norms that TF32 would perturb.
    """

    def __init__(
        self,
        net: ReLUNet,
        regularizer: Regularizer | None = None,
        lr: float = 5e-4,
        lr_drop_fraction: float = 0.1,
        net_config: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
        compile: bool = False,
        compile_mode: str = "default",
        check_finite_every_n_steps: int = 1,
    ):
        super().__init__()
        # speed options, not part of the recipe: a checkpoint rebuilds the same net without them
        self.save_hyperparameters(ignore=["net", "regularizer", "compile", "compile_mode",
                                          "check_finite_every_n_steps"])
        self.net = net
        self.regularizer = regularizer or Regularizer()
        # not self.compile: that is nn.Module's own method
        self.compile_loss, self.compile_mode = compile, compile_mode
        self.finite_guard = FiniteGuard(check_finite_every_n_steps)
        self._loss_fn = None
        k = net.num_classes
        # ModuleDict keys may not shadow nn.Module attributes ("train"), hence the suffix. The
        # train accuracy skips torchmetrics' argument checks: they synchronise with the GPU.
        self.accuracy = torch.nn.ModuleDict(
            {f"{split}_acc": MulticlassAccuracy(num_classes=k, average="micro", validate_args=split != "train")
             for split in ("train", "val", "test")}
        )

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        """The scheme's objective on (x, y): eagerly, or through torch.compile (``compile``)."""
        if self._loss_fn is None:
            fn = self.regularizer.training_loss
            self._loss_fn = torch.compile(fn, mode=self.compile_mode) if self.compile_loss else fn
        return self._loss_fn(self.net, x, y)

    def on_fit_start(self) -> None:
        # fp32 geometry: no TF32 in matmuls or convolutions (they are on by default for cuDNN)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        self._fit_started = time.perf_counter()
        self._train_seconds_before = getattr(self, "_train_seconds_before", 0.0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Wall seconds of training so far, over every resumed segment (for report recipes)."""
        started = getattr(self, "_fit_started", None)
        spent = 0.0 if started is None else time.perf_counter() - started
        checkpoint["train_seconds"] = getattr(self, "_train_seconds_before", 0.0) + spent

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._train_seconds_before = float(checkpoint.get("train_seconds", 0.0))
        # a killed fine-tune resumes with ckpt_path= alone: its record of init_from stays in the recipe
        earlier = (checkpoint.get("hyper_parameters") or {}).get("run_config") or {}
        run_config = self.hparams.get("run_config")
        if earlier.get("init_from") and isinstance(run_config, dict) and not run_config.get("init_from"):
            run_config["init_from"] = earlier["init_from"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.training_loss(x, y)
        self.accuracy["train_acc"].update(out.logits.detach(), y)
        self._last_loss, self._last_batch = out.loss.detach(), batch_idx  # for on_before_optimizer_step
        self.log("train/loss", out.loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        for name, value in out.logs.items():
            # a Python number made into a tensor by copying it to the GPU would wait for the GPU
            value = value if isinstance(value, torch.Tensor) else torch.full((), value, device=out.loss.device)
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True)
        return out.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before a NaN or infinite loss or gradient reaches the saved weights.

        ``check_finite_every_n_steps=1`` (the CPU default) reads the verdict every step and
        raises before the step, so the weights in memory stay finite too. With N > 1 (the GPU
        default) every step only folds its verdict into a flag on the device, which is read on
        every N-th step and on the last step of each epoch, before validation and checkpoints:
        the error names the same first bad step, but up to N - 1 bad updates may have reached
        the weights in memory (never a checkpoint). Either way the checkpoints of earlier epochs
        (last.ckpt among them) are kept: ModelCheckpoint does not save on exceptions. The
        verdict is agreed on by all processes of a DDP run, so all stop together.
        """
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        self.finite_guard.record(self._last_loss, grads, self.global_step)
        last_of_epoch = self._last_batch + 1 >= self.trainer.num_training_batches
        if not self.finite_guard.due(self.global_step, last_of_epoch):
            return
        bad = self.finite_guard.first_bad()
        if self.trainer.strategy.reduce_boolean_decision(bad is None, all=True):
            return
        step, loss = bad if bad is not None else (self.global_step, self._last_loss)
        batch = self._last_batch - (self.global_step - step)
        what = f"loss became {float(loss)}" if not torch.isfinite(loss) else "loss's gradient became NaN or inf"
        raise TrainingDiverged(f"training diverged: the {what} at epoch {self.current_epoch}, "
                               f"step {batch} of the epoch (global step {step})")

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
        drop_at = lr_drop_epoch(self.trainer.max_epochs, self.hparams.lr_drop_fraction)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[drop_at], gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
