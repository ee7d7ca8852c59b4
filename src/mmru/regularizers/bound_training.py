"""Provable robust training with bound propagation: the KW-l_inf and KW-l_2 rows of Table 1.

Wong & Kolter (the paper's [34]) minimise the robust cross-entropy: the cross-entropy of the
worst-case logits -m, where m_s <= min over the ball of f_y(x') - f_s(x') are the margin lower
bounds of their convex outer bound (m_y = 0). A model trained on it has many test points whose
margins stay positive over the whole ball, i.e. certified by the same bounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmru.attacks.geometry import as_p
from mmru.models import ReLUNet
from mmru.regularizers.base import Regularizer, TrainingLoss
from mmru.verify import METHODS, margin_lower_bounds


def robust_cross_entropy(margins: Tensor, y: Tensor) -> Tensor:
    """CE of the worst-case logits -margins [B, K] (entry y zero): an upper bound on the CE over the ball."""
    return F.cross_entropy(-margins, y)


class BoundTraining(Regularizer):
    """Robust training of Wong & Kolter at radius ``eps`` in l_p, loss = robust CE only.

    Weighting: the robust CE alone, as Wong & Kolter's training code; the clean CE is logged, not
    trained on. A robust CE near zero forces correct clean predictions anyway, as m_s is below the
    clean margin f_y(x) - f_s(x).

    Schedule: the radius ramps linearly over the first ``eps_warmup_epochs`` epochs, epochs counted
    from 1 like the MMR schedules: eps * min((e + 1) / eps_warmup_epochs, 1) in 0-based epoch e,
    so eps / eps_warmup_epochs in the first one (Wong & Kolter start near 0 and ramp per batch;
    per epoch is coarser but keeps the schedule a pure function of the epoch, so resumed runs
    repeat it). 0 or 1 warm-up epochs: the full eps from the start, as before any schedule call.

    ``method``: 'kw' (the paper's bounds), 'crown' (tighter) or 'ibp' (interval bounds).
    Logged: ``ce_clean``, ``robust_ce``, ``robust_error`` (fraction of the batch with some margin
    bound <= 0, i.e. not certified at the current radius) and ``eps``.
    """

    name = "kw"

    def __init__(self, eps: float, p: float | str, eps_warmup_epochs: int = 10, method: str = "kw"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.eps = float(eps)
        self.p = as_p(p)
        self.eps_warmup_epochs = int(eps_warmup_epochs)
        self.method = method
        self.eps_factor = 1.0

    @property
    def current_eps(self) -> float:
        return self.eps * self.eps_factor

    def on_epoch_start(self, epoch: int, max_epochs: int) -> dict[str, float]:
        warmup = self.eps_warmup_epochs
        self.eps_factor = min((epoch + 1) / warmup, 1.0) if warmup > 0 else 1.0
        return {"eps": self.current_eps}

    def training_loss(self, net: ReLUNet, x: Tensor, y: Tensor) -> TrainingLoss:
        logits = net(x)
        margins = margin_lower_bounds(net, x, y, self.current_eps, self.p, method=self.method)
        robust_ce = robust_cross_entropy(margins, y)
        # the entry at y is exactly 0; a certified point has every other entry > 0
        others = torch.ones_like(margins, dtype=torch.bool).scatter(1, y.unsqueeze(1), False)
        certified = torch.where(others, margins > 0, True).all(1) & (logits.argmax(1) == y)
        logs = {
            "ce_clean": F.cross_entropy(logits, y).detach(),
            "robust_ce": robust_ce.detach(),
            "robust_error": (~certified).float().mean().detach(),
            "eps": self.current_eps,
        }
        return TrainingLoss(robust_ce, logits, logs)
