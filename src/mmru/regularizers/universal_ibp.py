"""MMR-Universal plus IBP training for the union of balls.

MMR-Universal (eq 17) widens the linear regions and the margins in l1 and l_inf around each
training point, which certifies through the region (Theorem 4.1); the IBP union loss trains the
bound-propagation certificate of each of the three balls. The sum trains both certificates.
"""

from __future__ import annotations

from torch import Tensor

from mmru.models import ReLUNet
from mmru.regularizers.base import TrainingLoss
from mmru.regularizers.ibp_union import IBPUnion
from mmru.regularizers.universal import MMRUniversal


class UniversalIBP(MMRUniversal):
    """loss = ``IBPUnion`` loss + MMR-Universal penalty (both on the clean batch).

    Each part keeps its own schedule: MMR-Universal's lambda ramp and k_B decay per epoch
    (Sec. 5.1), IBP's eps, kappa ramps per step (Gowal et al. 2018). Logged: both parts' terms.
    """

    name = "universal_ibp"

    def __init__(
        self,
        lambda_1: float,
        lambda_inf: float,
        gamma_1: float,
        gamma_inf: float,
        eps: dict[str, float],
        k_b_start: float = 0.20,
        k_b_end: float = 0.05,
        lambda_warmup_epochs: int = 10,
        weighting: str = "per_norm",
        geometry: str = "fast",
        warmup_epochs: float = 1.0,
        ramp_epochs: float = 10.0,
        kappa_start: float = 1.0,
        kappa_end: float = 0.5,
        eps_factor_start: float = 0.0,
    ):
        super().__init__(lambda_1, lambda_inf, gamma_1, gamma_inf, k_b_start, k_b_end, lambda_warmup_epochs,
                         weighting, geometry)
        self.ibp = IBPUnion(eps, warmup_epochs, ramp_epochs, kappa_start, kappa_end, eps_factor_start)

    def on_epoch_start(self, epoch: int, max_epochs: int) -> dict[str, float]:
        return {**super().on_epoch_start(epoch, max_epochs), **self.ibp.on_epoch_start(epoch, max_epochs)}

    def on_step_start(self, epoch: float) -> None:
        self.ibp.on_step_start(epoch)

    def training_loss(self, net: ReLUNet, x: Tensor, y: Tensor) -> TrainingLoss:
        out = self.ibp.training_loss(net, x, y)
        penalty, logs = self.penalty(net, x, y)
        logs = {**out.logs, **logs, "ibp_loss": out.loss.detach(), "penalty": penalty.detach()}
        return TrainingLoss(out.loss + penalty, out.logits, logs)
