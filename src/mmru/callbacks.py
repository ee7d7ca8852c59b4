"""Lightning callbacks: the regularizer's schedules (λ ramp, k_B decay) and per-epoch seeding."""

from __future__ import annotations

import lightning as L
import torch


class RegularizerSchedule(L.Callback):
    """Before every training epoch, applies the scheme's schedule and logs its values.

    The schedule itself (λ from λ/10 to λ over the first epochs, k_B falling linearly, Sec.
    5.1) belongs to each scheme, see ``Regularizer.on_epoch_start``; this callback only says
    when it runs, so a resumed run re-applies the schedule of the epoch it resumes at.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = pl_module.regularizer.on_epoch_start(trainer.current_epoch, trainer.max_epochs)
        for name, value in values.items():
            pl_module.log(f"schedule/{name}", float(value), on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # per-step ramps (the eps ramp of IBP training) see the position within the epoch too
        pl_module.regularizer.on_step_start(trainer.current_epoch + batch_idx / max(trainer.num_training_batches, 1))


class EpochSeed(L.Callback):
    """Seeds the global RNG from (seed, epoch) before every training epoch.

    Random starts of attacks and data augmentation draw from the global RNG, which
    checkpoints do not store; reseeding per epoch makes a resumed run repeat an uninterrupted
    one exactly.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed * 1_000_003 + trainer.current_epoch + 1000 * trainer.global_rank)
