"""A callback that simulates a run killed after a given epoch (for the resume test)."""

import lightning as L


class KillAfterEpoch(L.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > self.epoch:
            raise RuntimeError("killed")
