"""MMR+AT: MMR-l_p (eq 16) together with PGD adversarial training, the MMR+AT rows of Table 1,
and the same pairing for MMR-Universal (eq 17), a fine-tuning scheme beyond the paper.

As in the authors' code (Croce, Andriushchenko & Hein, AISTATS 2019): part of every batch is
replaced by PGD points in l_p, the cross-entropy is taken on the mixed batch, and the MMR
penalty on the points left clean (the region geometry of eqs 14, 15 is that of clean inputs).
"""

from __future__ import annotations

from torch import Tensor

from mmru.models import ReLUNet
from mmru.regularizers.adversarial import AdversarialTraining
from mmru.regularizers.base import TrainingLoss
from mmru.regularizers.mmr import MMR, MarginSchedule
from mmru.regularizers.universal import MMRUniversal


class _MarginsWithAdversarialTraining(AdversarialTraining):
    """CE on the PGD-mixed batch plus a margin penalty (``self.mmr``) on its clean part."""

    mmr: MarginSchedule

    def _check_clean_points(self) -> None:
        if self.adv_fraction >= 1.0:
            raise ValueError(f"{type(self).__name__} needs clean points for its margin penalty: adv_fraction "
                             "must be below 1")

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


class MMRAdversarialTraining(_MarginsWithAdversarialTraining):
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
        self._check_clean_points()
        self.mmr = MMR(p, gamma_b, gamma_d, lam, k_b_start, k_b_end, k_d, lambda_warmup_epochs)


class UniversalAdversarialTraining(_MarginsWithAdversarialTraining):
    """CE(mixed batch) + the MMR-Universal penalty (eq 17: l1 and l_inf margins) on the clean part.

    Meant for fine-tuning an MMR-Universal network: PGD in l_``p`` removes attackable points while
    the penalty keeps the margins its certificates (and the exact stage's stable units) rest on.
    ``eps``, ``p``, ``steps``, ``adv_fraction``, ``step_size`` configure PGD as in
    :class:`AdversarialTraining`; the rest are :class:`MMRUniversal`'s parameters.
    """

    name = "universal_at"

    def __init__(
        self,
        lambda_1: float,
        lambda_inf: float,
        gamma_1: float,
        gamma_inf: float,
        eps: float,
        steps: int,
        p: float | str = "inf",
        adv_fraction: float = 0.5,
        k_b_start: float = 0.20,
        k_b_end: float = 0.05,
        lambda_warmup_epochs: int = 10,
        weighting: str = "per_norm",
        geometry: str = "fast",
        step_size: float | None = None,
    ):
        super().__init__(eps, p, steps, adv_fraction, step_size)
        self._check_clean_points()
        self.mmr = MMRUniversal(lambda_1, lambda_inf, gamma_1, gamma_inf, k_b_start, k_b_end, lambda_warmup_epochs,
                                weighting, geometry)
