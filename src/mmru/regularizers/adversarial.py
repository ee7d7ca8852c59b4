"""Adversarial training (AT) with PGD: the AT-l_inf, AT-l_2 and AT-(l1, l2, l_inf) rows of Table 1.

Madry et al. train on PGD points of the threat model; as in the authors' code, only a fraction
(``adv_fraction``, 0.5 in Table 1) of every batch is replaced by its PGD points and the loss is
the cross-entropy of the mixed batch. The union variant (Tramèr & Boneh's "max" strategy) runs
PGD in each norm and keeps, per example, the point with the highest loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mmru.attacks import pgd
from mmru.attacks.geometry import as_p
from mmru.models import ReLUNet
from mmru.regularizers.base import Regularizer, TrainingLoss

#: the norms of AT-(l1, l2, l_inf), by their config names
UNION_NORMS = {"l1": 1.0, "l2": 2.0, "linf": math.inf}


def _check_fraction(adv_fraction: float) -> float:
    adv_fraction = float(adv_fraction)
    if not 0.0 <= adv_fraction <= 1.0:
        raise ValueError(f"adv_fraction must lie in [0, 1], got {adv_fraction}")
    return adv_fraction


class MixedAdversarialTraining(Regularizer, ABC):
    """Cross-entropy on a batch whose first ``round(adv_fraction * B)`` points are replaced by
    adversarial examples from :meth:`adversarial_examples` (which subclasses define).

    Logged: ``ce_clean`` (CE of the whole clean batch), ``ce_adv`` (CE of the adversarial
    points), ``adv_error`` (fraction of the adversarial points misclassified).
    """

    def __init__(self, steps: int, adv_fraction: float = 0.5):
        self.steps = int(steps)
        self.adv_fraction = _check_fraction(adv_fraction)

    @abstractmethod
    def adversarial_examples(self, net: ReLUNet, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Detached adversarial points for (x, y) and values to log."""

    def num_adversarial(self, batch_size: int) -> int:
        return int(round(self.adv_fraction * batch_size))

    def mixed_batch(self, net: ReLUNet, x: Tensor, y: Tensor) -> tuple[Tensor, int, dict[str, float]]:
        """x with its first n points replaced by adversarial ones; n; the attack's logs."""
        n = self.num_adversarial(len(x))
        if n == 0:
            return x, 0, {}
        x_adv, logs = self.adversarial_examples(net, x[:n], y[:n])
        return torch.cat([x_adv, x[n:]]), n, logs

    def training_loss(self, net: ReLUNet, x: Tensor, y: Tensor) -> TrainingLoss:
        mixed, n, logs = self.mixed_batch(net, x, y)
        logits = net(mixed)
        loss = F.cross_entropy(logits, y)
        clean_logits = logits
        if n > 0:
            # The accuracy metric wants the clean batch: the adversarial half's clean logits
            # cost one gradient-free forward pass.
            with torch.no_grad():
                clean_logits = torch.cat([net(x[:n]), logits[n:]])
            logs["ce_adv"] = F.cross_entropy(logits[:n], y[:n]).detach()
            logs["adv_error"] = (logits[:n].argmax(1) != y[:n]).float().mean().detach()
        logs["ce_clean"] = F.cross_entropy(clean_logits, y).detach()
        return TrainingLoss(loss, clean_logits, logs)


class AdversarialTraining(MixedAdversarialTraining):
    """AT-l_p (Madry et al.): PGD of radius ``eps`` in l_p with ``steps`` steps.

    ``step_size`` None takes the attack's default (2.5 eps / steps for l_2 and l_inf).
    """

    name = "at"

    def __init__(
        self,
        eps: float,
        p: float | str,
        steps: int,
        adv_fraction: float = 0.5,
        step_size: float | None = None,
    ):
        super().__init__(steps, adv_fraction)
        self.eps = float(eps)
        self.p = as_p(p)
        self.step_size = None if step_size is None else float(step_size)

    def adversarial_examples(self, net: ReLUNet, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        return pgd(net, x, y, self.eps, self.p, self.steps, self.step_size), {}


class UnionAdversarialTraining(MixedAdversarialTraining):
    """AT-(l1, l2, l_inf) of Tramèr & Boneh ("max" strategy): per example, PGD in each norm at
    its own radius (``eps`` maps 'l1', 'l2', 'linf' to radii, e.g. ``${dataset.eps}``), and the
    point of highest cross-entropy is trained on.

    Logged: ``won_l1``, ``won_l2``, ``won_linf``, the fraction of adversarial points each norm gave.
    """

    name = "at_union"

    def __init__(self, eps: Mapping[str, float], steps: int, adv_fraction: float = 0.5):
        super().__init__(steps, adv_fraction)
        if set(eps) != set(UNION_NORMS):
            raise ValueError(f"eps must give a radius for each of {sorted(UNION_NORMS)}, got {sorted(eps)}")
        self.eps = {name: float(eps[name]) for name in UNION_NORMS}

    def adversarial_examples(self, net: ReLUNet, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        candidates, losses = [], []
        for name, p in UNION_NORMS.items():
            x_adv = pgd(net, x, y, self.eps[name], p, self.steps)
            with torch.no_grad():
                losses.append(F.cross_entropy(net(x_adv), y, reduction="none"))
            candidates.append(x_adv)
        # ties (e.g. all three attacks stuck at a flat point) go to the first norm
        winner = torch.stack(losses).argmax(0)
        stacked = torch.stack(candidates)
        best = stacked[winner, torch.arange(len(x), device=x.device)]
        logs = {f"won_{name}": (winner == i).float().mean().item() for i, name in enumerate(UNION_NORMS)}
        return best, logs
