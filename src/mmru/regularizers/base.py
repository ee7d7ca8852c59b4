"""The one interface every training scheme implements.

A scheme turns a batch into the training objective. Plain training is cross-entropy; the
MMR family adds a penalty on the clean batch (eqs 16, 17); adversarial training replaces
part of the batch. So the interface returns the whole objective, not just an additive term.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mmru.models import ReLUNet


@dataclass
class TrainingLoss:
    """What one training step optimises and reports."""

    loss: torch.Tensor  #: scalar objective to minimise
    logits: torch.Tensor  #: logits of the clean batch, for accuracy metrics
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)  #: per-term values to log


class Regularizer:
    """Plain training (``regularizer=none``): cross-entropy on the clean batch.

    Subclasses override :meth:`penalty` to add a term to the cross-entropy, or
    :meth:`training_loss` to change the objective altogether.
    """

    name = "none"

    def training_loss(self, net: ReLUNet, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        logits = net(x)
        ce = F.cross_entropy(logits, y)
        penalty, logs = self.penalty(net, x, y)
        logs = {"ce": ce.detach(), **logs}
        if penalty is None:
            return TrainingLoss(ce, logits, logs)
        logs["penalty"] = penalty.detach()
        return TrainingLoss(ce + penalty, logits, logs)

    def penalty(
        self, net: ReLUNet, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor | float]]:
        """Term added to the cross-entropy (batch mean) and its parts to log; None for none."""
        return None, {}

    def on_epoch_start(self, epoch: int, max_epochs: int) -> dict[str, float]:
        """Apply this scheme's schedule for ``epoch`` (0-based); return the scheduled values.

        Called by :class:`mmru.callbacks.RegularizerSchedule` before every training epoch.
        """
        return {}

    def on_step_start(self, epoch: float) -> None:
        """Apply a per-step schedule at the fractional ``epoch`` (epoch + batch / batches per epoch).

        Called by :class:`mmru.callbacks.RegularizerSchedule` before every training step; none here.
        """
