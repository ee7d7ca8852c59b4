"""MMR+AT: MMR-l_p (eq 16) together with PGD adversarial training, the MMR+AT rows of Table 1.

As in the authors' code (Croce, Andriushchenko & Hein, AISTATS 2019): part of every batch is
replaced by PGD points in l_p, the cross-entropy is taken on the mixed batch, and the MMR
penalty on the points left clean (the region geometry of eqs 14, 15 is that of clean inputs).
"""

from __future__ import annotations

from torch import Tensor

from mmru.models import ReLUNet
from mmru.regularizers.adversarial import AdversarialTraining
from mmru.regularizers.base import TrainingLoss
from mmru.regularizers.mmr import MMR


class MMRAdversarialTraining(AdversarialTraining):
    """CE(mixed batch) + MMR-l_p penalty (eq 16, with its lambda ramp and k_B schedule) on the clean part.

    ``p`` is both MMR's norm and the PGD norm; ``eps``, ``steps``, ``adv_fraction``, ``step_size``
    configure PGD as in :class:`AdversarialTraining`; the rest are :class:`MMR`'s parameters.
    ``adv_fraction`` must leave some clean points for the penalty.
    """

    name = "mmr_at"

    def __init__(
        self,
        p: float | str,
        gamma_b: float,
        gamma_d: float,
        lam: float,
        eps: float,
        steps: int,
        adv_fraction: float = 0.5,
        k_b_start: float = 0.10,
        k_b_end: float = 0.02,
        k_d: int | None = None,
        lambda_warmup_epochs: int = 10,
        step_size: float | None = None,
    ):
        super().__init__(eps, p, steps, adv_fraction, step_size)
        if self.adv_fraction >= 1.0:
            raise ValueError("MMR+AT needs clean points for the MMR penalty: adv_fraction must be below 1")
        self.mmr = MMR(p, gamma_b, gamma_d, lam, k_b_start, k_b_end, k_d, lambda_warmup_epochs)

    def training_loss(self, net: ReLUNet, x: Tensor, y: Tensor) -> TrainingLoss:
        out = super().training_loss(net, x, y)
        n = self.num_adversarial(len(x))
        if n == len(x):  # a batch too small to keep a clean point (e.g. the last one of an epoch)
            return out
        penalty, mmr_logs = self.mmr.penalty(net, x[n:], y[n:])
        logs = {"ce": out.loss.detach(), **out.logs, **mmr_logs, "penalty": penalty.detach()}
        return TrainingLoss(out.loss + penalty, out.logits, logs)

    def on_epoch_start(self, epoch: int, max_epochs: int) -> dict[str, float]:
        return self.mmr.on_epoch_start(epoch, max_epochs)
